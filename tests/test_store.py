import hashlib
import logging
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from levo_batch.store import (
    Fingerprint,
    StaleRecordError,
    TokenStore,
    canonical,
    fingerprint,
)
from levo_batch.store import _FP_KEY, _digest, _stored_digest

PARTS = {"model": "abc123", "sampling": {"temperature": 0.9, "top_k": 50}, "seed": 7}


def status(store: TokenStore, idx: str, fp) -> str:
    """What the store holds for `idx` under `fp`, read without side effects: done (matching record), partial
    (matching checkpoint), stale (only other or unreadable files) or missing."""
    digest = _digest(fp)
    if _stored_digest(store.path(idx), "fingerprint") == digest:
        return "done"
    if _stored_digest(store.partial_path(idx), _FP_KEY) == digest:
        return "partial"
    if store.path(idx).exists() or store.partial_path(idx).exists():
        return "stale"
    return "missing"


def temps(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def tokens_of(*rows):
    return np.array(rows, dtype=np.int64)


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from levo_batch.store import TokenStore

    store = TokenStore(sys.argv[1])
    i = int(sys.argv[2])
    while True:
        tokens = np.full((3, 300_000), i % 16000, dtype=np.int64)
        store.save("song", tokens, "fp", {"i": i})
        store.save_partial("song", {"cols": tokens[:, :5000], "step": np.array(i)}, "fp")
        if i == int(sys.argv[2]):
            print("ready", flush=True)
        i += 1
    """
)


def test_sigkill_mid_write_never_leaves_a_corrupt_record(tmp_path):
    rng = random.Random(0)
    for attempt in range(4):
        args = [sys.executable, "-c", WRITER, str(tmp_path), str(attempt * 1000)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = TokenStore(tmp_path)
        assert temps(store.dir) == []
        record = store.load("song", "fp")
        assert record is not None and record.tokens.shape == (3, 300_000)
        assert (record.tokens == record.meta["i"] % 16000).all()
        partial = store.load_partial("song", "fp")
        if partial is not None:
            assert partial["cols"].shape == (3, 5000)
            assert (partial["cols"] == int(partial["step"]) % 16000).all()


# --- fingerprints --------------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_sorted_compact_json():
    assert fingerprint({"b": 1, "a": "x"}) == hashlib.sha256(b'{"a":"x","b":1}').hexdigest()


def test_fingerprint_ignores_key_order_and_array_layout():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    first = {"prompt": a, "sampling": {"top_k": 50, "temperature": 0.9}}
    second = {"sampling": {"temperature": 0.9, "top_k": 50}, "prompt": np.asfortranarray(a.copy())}
    assert fingerprint(first) == fingerprint(second)
    assert fingerprint({"n": np.int64(3)}) == fingerprint({"n": 3})


def test_fingerprint_sees_every_change():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    base = fingerprint({**PARTS, "prompt": a})
    changed = [
        {**PARTS, "prompt": a.astype(np.int32)},
        {**PARTS, "prompt": a.reshape(4, 3)},
        {**PARTS, "prompt": a + (np.arange(12).reshape(3, 4) == 11)},
        {**PARTS, "prompt": a, "sampling": {"temperature": 1.0, "top_k": 50}},
        {**PARTS, "prompt": a, "seed": 8},
        {**PARTS, "prompt": None},
    ]
    digests = {fingerprint(p) for p in changed}
    assert base not in digests and len(digests) == len(changed)


def test_fingerprint_rejects_unhashable_values():
    with pytest.raises(TypeError, match="set"):
        fingerprint({"x": {1, 2}})


def test_fingerprint_object_keeps_json_parts():
    a = np.ones((3, 2), dtype=np.int64)
    fp = Fingerprint.of({**PARTS, "prompt": a})
    assert fp.digest == fingerprint({**PARTS, "prompt": a})
    assert fp.parts["prompt"] == {
        "ndarray": "<i8",
        "shape": [3, 2],
        "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
    }
    assert canonical(PARTS) == PARTS


# --- records -------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    store = TokenStore(tmp_path)
    tokens = tokens_of([0, 16384, 5], [16385, 1, 2], [7, 8, 9])
    store.save_partial("s1", {"cols": tokens[:, :1]}, "fp")
    store.save("s1", tokens, "fp", {"steps": 3, "prompt": "auto"})
    assert sorted(p.name for p in store.dir.iterdir()) == ["s1.npz"]
    record = store.load("s1", "fp")
    assert record.tokens.dtype == np.int64
    np.testing.assert_array_equal(record.tokens, tokens)
    assert record.fingerprint == "fp" and record.meta == {"steps": 3, "prompt": "auto"}
    with np.load(store.path("s1"), allow_pickle=False) as npz:
        assert npz["tokens"].dtype == np.int16
    assert status(store, "s1", "fp") == "done"


def test_wide_tokens_are_kept_exactly(tmp_path):
    store = TokenStore(tmp_path)
    for wide in (70000, 2**40):
        tokens = tokens_of([wide, -1], [0, 1], [2, 3])
        store.save("w", tokens, "fp")
        np.testing.assert_array_equal(store.load("w", "fp").tokens, tokens)


def test_save_rejects_malformed_tokens(tmp_path):
    store = TokenStore(tmp_path)
    with pytest.raises(ValueError, match=r"song bad: expected integer tokens of shape \[3, T\]"):
        store.save("bad", np.zeros((2, 5), dtype=np.int64), "fp")
    with pytest.raises(ValueError, match="float32"):
        store.save("bad", np.zeros((3, 5), dtype=np.float32), "fp")


def test_missing_record(tmp_path):
    store = TokenStore(tmp_path)
    assert store.load("nope", "fp") is None
    assert store.load_partial("nope", "fp") is None
    assert status(store, "nope", "fp") == "missing"


def test_stale_record_is_reported_and_skipped(tmp_path, caplog):
    store = TokenStore(tmp_path)
    store.save("s", tokens_of([1], [2], [3]), Fingerprint.of(PARTS))
    newer = Fingerprint.of({**PARTS, "sampling": {"temperature": 1.0, "top_k": 50}})
    with caplog.at_level(logging.WARNING):
        assert store.load("s", newer) is None
    assert "Stale token record" in caplog.text and "sampling.temperature: 0.9 -> 1.0" in caplog.text
    assert status(store, "s", newer) == "stale"
    assert store.load("s", Fingerprint.of(PARTS)) is not None
    assert store.load_any("s").tokens.tolist() == [[1], [2], [3]]


def test_strict_store_refuses_stale_record(tmp_path):
    TokenStore(tmp_path).save("s", tokens_of([1], [2], [3]), Fingerprint.of(PARTS))
    strict = TokenStore(tmp_path, strict=True)
    newer = Fingerprint.of({**PARTS, "seed": 8, "model": "def456"})
    with pytest.raises(StaleRecordError) as err:
        strict.load("s", newer)
    message = str(err.value)
    assert str(strict.path("s")) in message
    assert 'model: "abc123" -> "def456"' in message and "seed: 7 -> 8" in message
    assert "--overwrite" in message and "another SAVE_DIR" in message
    with pytest.raises(StaleRecordError, match="different settings. Rerun with --overwrite"):
        strict.load("s", "plain-digest")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_key"])
def test_corrupt_record_is_moved_aside_never_a_crash(tmp_path, caplog, damage):
    """Issue 10, item 5: the corrupt file used to stay in place; now it is set aside as *.corrupt."""
    store = TokenStore(tmp_path, strict=True)
    store.save("s", tokens_of([1, 2], [3, 4], [5, 6]), "fp")
    path = store.path("s")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not an npz at all" * 10)
    else:
        np.savez(path, tokens=np.zeros((3, 2), dtype=np.int16))
    with caplog.at_level(logging.WARNING):
        assert store.load("s", "fp") is None
        assert store.load_any("s") is None
    assert "Unreadable token record" in caplog.text and str(path) in caplog.text
    assert "moved aside to s.npz.corrupt" in caplog.text
    assert path.with_name("s.npz.corrupt").exists() and not path.exists()
    assert status(store, "s", "fp") == "missing"


# --- checkpoints ---------------------------------------------------------------------------------------


def test_partial_round_trip_and_status(tmp_path):
    store = TokenStore(tmp_path)
    state = {
        "cols": np.arange(30, dtype=np.int32).reshape(3, 10),
        "step": np.array(10, dtype=np.int64),
        "probs": np.linspace(0, 1, 5, dtype=np.float32),
        "done": np.array([True, False]),
    }
    store.save_partial("p", state, "fp")
    assert status(store, "p", "fp") == "partial"
    loaded = store.load_partial("p", "fp")
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    assert store.load_partial("p", "other") is None
    assert status(store, "p", "other") == "stale"
    store.remove("p")
    assert status(store, "p", "fp") == "missing"


def test_partial_rejects_bad_state(tmp_path):
    store = TokenStore(tmp_path)
    with pytest.raises(ValueError, match="reserved key"):
        store.save_partial("p", {"__fingerprint__": np.zeros(1)}, "fp")
    with pytest.raises(TypeError, match="'steps' must be a numeric numpy array"):
        store.save_partial("p", {"steps": [1, 2]}, "fp")
    assert not store.partial_path("p").exists()


def test_corrupt_partial_restarts_song(tmp_path, caplog):
    store = TokenStore(tmp_path)
    store.save_partial("p", {"cols": np.zeros((3, 4), dtype=np.int32)}, "fp")
    store.partial_path("p").write_bytes(b"PK\x03\x04 broken")
    with caplog.at_level(logging.WARNING):
        assert store.load_partial("p", "fp") is None
    assert "restarts from scratch" in caplog.text


def test_matching_partial_beats_stale_finished_record(tmp_path):
    store = TokenStore(tmp_path)
    store.save("s", tokens_of([1], [2], [3]), "old")
    store.save_partial("s", {"cols": np.zeros((3, 1), dtype=np.int32)}, "new")
    assert status(store, "s", "new") == "partial"
    assert status(store, "s", "old") == "done"


# --- resume gives the uninterrupted tokens -------------------------------------------------------------

TOY_LM = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from levo_batch.store import TokenStore

    store, fp, seed, total = TokenStore(sys.argv[1]), "toy", 1234, 300
    state = store.load_partial("song", fp)
    cols = state["cols"] if state is not None else np.zeros((3, 0), dtype=np.int64)
    while cols.shape[1] < total:
        step = cols.shape[1]
        draw = np.random.default_rng([seed, step]).integers(0, 16384, 3)
        prev = cols[:, -1] if step else np.zeros(3, dtype=np.int64)
        cols = np.concatenate([cols, ((prev * 31 + draw) % 16384)[:, None]], axis=1)
        if cols.shape[1] % 5 == 0:
            store.save_partial("song", {"cols": cols}, fp)
        time.sleep(float(sys.argv[2]))
    store.save("song", cols, fp, {"steps": total})
    """
)


def test_killed_and_resumed_song_matches_uninterrupted_run(tmp_path):
    """The store keeps everything a counter-based sampler needs, however often the run is killed."""
    subprocess.run([sys.executable, "-c", TOY_LM, str(tmp_path / "ref"), "0"], check=True)
    reference = TokenStore(tmp_path / "ref").load("song", "toy").tokens

    rng, seen = random.Random(1), []
    while True:
        proc = subprocess.Popen([sys.executable, "-c", TOY_LM, str(tmp_path / "run"), "0.003"])
        try:
            proc.wait(timeout=0.3 + 0.1 * len(seen) + rng.uniform(0.0, 0.3))
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            seen.append(status(TokenStore(tmp_path / "run"), "song", "toy"))
    assert "partial" in seen
    store = TokenStore(tmp_path / "run")
    np.testing.assert_array_equal(store.load("song", "toy").tokens, reference)
    assert status(store, "song", "toy") == "done" and not store.partial_path("song").exists()
