"""Generation against upstream's recorded runs (fixtures/lm_tiny), plus batching, seeding and resume guarantees."""

from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np
import pytest
from fixture_meta import lm_arrays, lm_cases
from lm_checkpoints import write_fixture_official_checkpoint, write_official_checkpoint, write_public_mlx_checkpoint

from levo_batch.lm.batch import SongSlots
from levo_batch.lm.conditioners import banned_prompt_ids
from levo_batch.lm.generate import MLXTokenGenerator
from levo_batch.lm.loading import load_lm
from levo_batch.lm.pattern import cut_at_eos, num_columns, revert_pattern
from levo_batch.lm.sampling import SamplingParams, choose, gumbel_noise, process_logits
from levo_batch.lm.tokenizer import TextTokenizers
from levo_batch.contracts import SongRequest

GREEDY = SamplingParams(greedy=True)
SAMPLED = SamplingParams()


@dataclass(frozen=True)
class Recorded:
    """Length of the recorded runs, from the fixture's own metadata (cases.json "generation")."""

    seconds: float
    frames: int
    steps: int
    """LM steps of a song that runs to the end: every pattern column after the leading special one."""
    columns: int


class RecordingSink:
    def __init__(self):
        self.tokens, self.checkpoints, self.steps = {}, {}, {}

    def checkpoint(self, idx, state):
        self.checkpoints.setdefault(idx, []).append({k: np.array(v) for k, v in state.items()})

    def finished(self, idx, tokens):
        assert idx not in self.tokens, f"{idx} finished twice"
        self.tokens[idx] = tokens

    def progress(self, idx, step, total):
        self.steps.setdefault(idx, []).append((step, total))


@pytest.fixture(scope="module")
def cases():
    return lm_cases()


@pytest.fixture(scope="module")
def tiny(fixtures, tmp_path_factory):
    return load_lm(write_fixture_official_checkpoint(tmp_path_factory.mktemp("lm_tiny"), fixtures))


@pytest.fixture(scope="module")
def recorded(cases, tiny) -> Recorded:
    frames = cases["generation"]["gen_len"]
    columns = num_columns(frames, tiny.config.delays)
    return Recorded(cases["generation"]["duration_s"], frames, columns - 1, columns)


@pytest.fixture(scope="module")
def tok(fixtures):
    return TextTokenizers.from_dir(fixtures / "qwen2_tokenizer")


def _song(job, seed=0, idx=None, resume=None) -> SongRequest:
    prompt = lm_arrays(job["name"])["prompt_tokens"]
    inputs = job["codeclm_generate_inputs"]
    return SongRequest(idx or job["name"], inputs["lyrics"][0], inputs["descriptions"][0],
                       None if prompt.size == 0 else prompt[0], seed, resume)


def _generator(tiny, tok, sampling, cfg=None, **kw):
    return MLXTokenGenerator(tiny.model, cfg or tiny.config, tok, model_id="lm_tiny", sampling=sampling, **kw)


def test_pattern_round_trip_and_eos_cut():
    codes = np.arange(12).reshape(3, 4)
    seq = np.array([[99, 0, 1, 2, 3, 99, 99], [99, 99, 99, 4, 5, 6, 7], [99, 99, 99, 8, 9, 10, 11]])
    assert seq.shape[1] == num_columns(4, (0, 2, 2))
    assert np.array_equal(revert_pattern(seq, 4, (0, 2, 2)), codes)
    codes[1, 2], codes[2, 1] = 50, 50
    assert np.array_equal(cut_at_eos(codes, 50), codes[:, :1])
    assert np.array_equal(cut_at_eos(codes, 77), codes)


def test_slots_reproduce_upstream_greedy_runs(tiny, cases, recorded):
    """All five jobs in one batch: written pattern, per-step argmax, processed logits, reverted and cut codes."""
    cfg, jobs = tiny.config, cases["jobs"]
    slots = SongSlots(tiny.model, cfg, GREEDY, len(jobs), recorded.frames, keep_logits=True)
    arrays = [lm_arrays(j["name"]) for j in jobs]
    for b, a in enumerate(arrays):
        lyrics, desc = a["cond_description"], a["cond_type_info"]
        p1 = mx.array(np.concatenate([lyrics, a["cond_prompt_audio_1"], desc], axis=1))
        p2 = mx.array(np.concatenate([lyrics, a["cond_prompt_audio_2"], desc], axis=1))
        prompt = a["prompt_tokens"]
        slots.insert(b, p1, p2, banned_prompt_ids(None if prompt.size == 0 else prompt[0], cfg), 0,
                     np.full((3, 1), cfg.special_id, dtype=np.int32), np.zeros(3, dtype=bool))
    argmax = {b: [] for b in range(len(jobs))}
    kept = {b: {} for b in range(len(jobs))}
    final = {}
    while slots.busy():
        out = slots.step()
        done = out.done.tolist()
        best = np.array(mx.argmax(out.logits, axis=-1))
        for b, owner in enumerate(out.owners):
            if owner is None:
                continue
            column = out.columns[b]
            argmax[b].append(best[b])
            if column in arrays[b]["greedy_logits_steps"]:
                kept[b][column] = np.array(out.logits[b])
            if done[b]:
                final[b] = np.array(out.seq[b, :, :recorded.columns])
                slots.release(b)
    for b, (job, a) in enumerate(zip(jobs, arrays)):
        assert len(argmax[b]) == job["greedy"]["pattern_steps_run"]
        live = a["greedy_step_live"]
        assert np.array_equal(np.array(argmax[b])[live], a["greedy_step_argmax"][live]), job["name"]
        for i, column in enumerate(a["greedy_logits_steps"]):
            want, got = a["greedy_logits"][i], kept[b][column]
            assert np.array_equal(np.isneginf(got), np.isneginf(want))
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite], want[finite], atol=1e-4, rtol=0)
        assert np.array_equal(final[b], a["greedy_pattern_sequence"][0]), job["name"]
        codes = revert_pattern(final[b], recorded.frames, cfg.delays)
        assert np.array_equal(codes, a["greedy_codes"][0])
        assert np.array_equal(cut_at_eos(codes, cfg.eos_id), a["greedy_tokens"][0])


def _greedy_steps(job) -> int:
    return job["greedy"]["pattern_steps_run"]


@pytest.fixture(scope="module")
def checkpoint_every(cases) -> int:
    """A third of the shortest recorded run: every song is checkpointed at least twice before it ends."""
    return min(_greedy_steps(j) for j in cases["jobs"]) // 3


@pytest.fixture(scope="module")
def greedy_run(tiny, tok, cases, recorded, checkpoint_every):
    """Every job through the generator in one batch (those that stop early leave it early)."""
    gen = _generator(tiny, tok, GREEDY, batch_size=len(cases["jobs"]), max_duration=recorded.seconds,
                     checkpoint_every=checkpoint_every)
    sink = RecordingSink()
    gen.generate([_song(j) for j in cases["jobs"]], sink)
    return gen, sink


def test_generator_tokens_match_upstream(cases, greedy_run, recorded, checkpoint_every):
    gen, sink = greedy_run
    assert gen.max_steps() == recorded.steps
    assert gen.fingerprint()["sampling"]["cfg_coef"] == cases["generation"]["cfg_coef"]
    assert gen.fingerprint()["model"] == "lm_tiny"
    for job in cases["jobs"]:
        name = job["name"]
        assert sink.tokens[name].dtype == np.int64
        assert np.array_equal(sink.tokens[name], lm_arrays(name)["greedy_tokens"][0]), name
        steps = _greedy_steps(job)
        assert sink.steps[name] == [(s, recorded.steps) for s in range(1, steps + 1)]
        checkpointed = [int(c["step"]) for c in sink.checkpoints[name]]
        assert checkpointed == list(range(checkpoint_every, steps, checkpoint_every))


def test_resume_mid_song_gives_identical_tokens_greedy(tiny, tok, cases, greedy_run, recorded):
    """The song that ends earliest resumed at its last checkpoint (where the recording shows which codebooks had
    already ended) and the one that runs longest at its first, in one batch."""
    _, sink = greedy_run
    early = min(cases["jobs"], key=_greedy_steps)
    late = max(cases["jobs"], key=_greedy_steps)
    states = {early["name"]: sink.checkpoints[early["name"]][-1], late["name"]: sink.checkpoints[late["name"]][0]}
    for job in (early, late):
        state, written = states[job["name"]], lm_arrays(job["name"])["greedy_pattern_sequence"][0]
        step = int(state["step"])
        assert state["columns"].shape == (3, step + 1)
        assert state["ended"].tolist() == (written[:, 1 : step + 1] == tiny.config.eos_id).any(axis=1).tolist()
    songs = [_song(job, resume=states[job["name"]]) for job in (early, late)]
    again = RecordingSink()
    _generator(tiny, tok, GREEDY, batch_size=2, max_duration=recorded.seconds).generate(songs, again)
    for job in (early, late):
        name = job["name"]
        assert np.array_equal(again.tokens[name], sink.tokens[name]), name
        assert again.steps[name][0] == (int(states[name]["step"]) + 1, recorded.steps)


def test_sampled_run_replays_inside_upstream_choices(tiny, cases, recorded):
    """torch.multinomial cannot be reproduced: check each recorded draw against our processed logits."""
    cfg, model, generation = tiny.config, tiny.model, cases["generation"]
    sampled = [j["name"] for j in cases["jobs"] if "sampled" in j]
    assert sampled, "lm_tiny records no sampled run"
    a = lm_arrays(sampled[0])
    seq = a["sampled_pattern_sequence"][0]
    steps = seq.shape[1] - 1
    lyrics, desc = a["cond_description"], a["cond_type_info"]
    p1 = mx.array(np.concatenate([lyrics, a["cond_prompt_audio_1"], desc], axis=1))
    p2 = mx.array(np.concatenate([lyrics, a["cond_prompt_audio_2"], desc], axis=1))
    raw = model(p1, p2, mx.array(np.repeat(seq[None, :, :steps], 2, axis=0)))  # [2, 3, steps, V]
    presence = np.zeros((steps, 3, cfg.code_size + 2), dtype=bool)
    for s in range(1, steps + 1):
        for q in range(3):
            presence[s - 1, q, np.unique(seq[q, max(1, s - generation["record_window"]) : s])] = True
    logits = process_logits(raw.transpose(2, 0, 1, 3).reshape(2 * steps, 3, -1), mx.array(presence[..., :-1]),
                            mx.zeros((steps, cfg.code_size + 1), dtype=mx.bool_), generation["cfg_coef"],
                            SAMPLED.penalty, cfg.code_size)
    logits = np.array(logits)
    top_k = generation["sampled"]["top_k"]
    kth = -np.partition(-logits[:, 0], top_k - 1, axis=-1)[:, top_k - 1]
    for q, delay in enumerate(cfg.delays):
        eos = np.nonzero(seq[q] == cfg.eos_id)[0]
        drawn = range(1 + delay, (int(eos[0]) if eos.size else delay + recorded.frames) + 1)
        for s in drawn:
            if q == 0:  # top-k sampling: the draw must be among the k best
                assert logits[s - 1, 0, seq[0, s]] >= kth[s - 1], f"codebook 0 step {s}"
            else:  # k = 1: the draw is the argmax
                assert logits[s - 1, q].argmax() == seq[q, s], f"codebook {q} step {s}"


def test_gumbel_choice_samples_the_top_k_softmax():
    logits = mx.array([[[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]] * 3])
    n = 6000
    seeds = mx.stack([mx.arange(n, dtype=mx.uint32), mx.full((n,), 7, dtype=mx.uint32)], axis=1)
    params = SamplingParams(temperature=0.8, top_k=3)
    drawn = np.array(choose(mx.broadcast_to(logits, (n, 3, 6)), seeds, mx.full((n,), 5), params))
    assert set(drawn[:, 1]) == {5} and set(drawn[:, 2]) == {5}
    freq = np.bincount(drawn[:, 0], minlength=6) / n
    keep = np.array([2.0, 1.0, 3.0]) / 0.8
    want = np.exp(keep - keep.max()) / np.exp(keep - keep.max()).sum()
    assert freq[[2, 3, 4]].sum() == 0
    np.testing.assert_allclose(freq[[0, 1, 5]], want, atol=0.02)


def test_noise_is_a_function_of_seed_and_step_only():
    seeds = mx.array([[1, 0], [2, 0], [1, 0], [1, 1]], dtype=mx.uint32)
    noise = np.array(gumbel_noise(seeds, mx.array([3, 3, 3, 3]), 50))
    alone = np.array(gumbel_noise(seeds[:1], mx.array([3]), 50))
    assert np.array_equal(noise[0], alone[0]) and np.array_equal(noise[0], noise[2])
    assert not np.array_equal(noise[0], noise[1]) and not np.array_equal(noise[0], noise[3])
    assert not np.array_equal(alone, np.array(gumbel_noise(seeds[:1], mx.array([4]), 50)))


SHORT_DELAYS = (0, 4, 4)
"""Batching and resume guarantees do not need upstream's 250-column delay; a short one keeps the runs fast."""


def _short_songs(cases):
    """Three recorded jobs, each with another kind of prompt where the recording has them (full, mixed row only,
    none)."""
    by_kind = {}
    for job in cases["jobs"]:
        by_kind.setdefault(job["prompt"]["kind"], job)
    jobs = [*by_kind.values(), *(j for j in cases["jobs"] if j not in by_kind.values())][:3]
    return [_song(job, seed=1000 + i) for i, job in enumerate(jobs)]


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_songs_do_not_depend_on_batch_mates(tiny, tok, cases, sampling):
    cfg = replace(tiny.config, delays=SHORT_DELAYS)
    songs = _short_songs(cases)
    alone = {}
    for song in songs:
        sink = RecordingSink()
        _generator(tiny, tok, sampling, cfg, batch_size=1, max_duration=0.8).generate([song], sink)
        alone.update(sink.tokens)
    for batch in (3, 2):
        sink = RecordingSink()
        _generator(tiny, tok, sampling, cfg, batch_size=batch, max_duration=0.8).generate(songs, sink)
        for song in songs:
            assert np.array_equal(sink.tokens[song.idx], alone[song.idx]), (batch, song.idx)
    assert len({alone[s.idx].tobytes() for s in songs}) == 3


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_resume_from_every_checkpoint_gives_identical_tokens(tiny, tok, cases, sampling):
    cfg = replace(tiny.config, delays=SHORT_DELAYS)
    song = _short_songs(cases)[1]
    full = RecordingSink()
    _generator(tiny, tok, sampling, cfg, max_duration=0.8, checkpoint_every=6).generate([song], full)
    states = full.checkpoints[song.idx]
    assert states and [int(s["step"]) for s in states] == list(range(6, len(full.steps[song.idx]), 6))
    resumed = [replace(song, idx=f"r{int(s['step'])}", resume=s) for s in states]
    again = RecordingSink()
    _generator(tiny, tok, sampling, cfg, batch_size=3, max_duration=0.8).generate(resumed, again)
    for r in resumed:
        assert np.array_equal(again.tokens[r.idx], full.tokens[song.idx]), r.idx


def test_resume_state_from_another_duration_is_refused(tiny, tok, cases, greedy_run, recorded):
    _, sink = greedy_run
    job = cases["jobs"][0]
    song = _song(job, resume=sink.checkpoints[job["name"]][0])
    with pytest.raises(ValueError, match=f"resume state is for {recorded.frames} frames.*same max_duration"):
        _generator(tiny, tok, GREEDY, max_duration=recorded.seconds / 2).generate([song], RecordingSink())


def test_resumed_song_that_had_ended_finishes_without_decoding(tiny, tok):
    columns = np.full((3, 12), 16385, dtype=np.int32)
    columns[0, 1:4] = [5, 6, 16384]
    columns[1:, 5:7] = [[7, 16384], [8, 16384]]
    state = {"columns": columns, "step": np.array(11), "ended": np.ones(3, dtype=bool), "timesteps": np.array(20)}
    sink = RecordingSink()
    gen = _generator(tiny, tok, GREEDY, cfg=replace(tiny.config, delays=SHORT_DELAYS), max_duration=0.8)
    gen.generate([SongRequest("done", ".", ".", None, 0, state)], sink)
    assert sink.tokens["done"].tolist() == [[5], [7], [8]]  # codebooks 1, 2 hit EOS at frame 1
    assert sink.steps == {}


def test_invalid_prompt_is_refused_before_any_decoding(tiny, tok, cases, recorded):
    good = _song(cases["jobs"][0])
    bad = replace(good, idx="bad", prompt_tokens=np.zeros((2, 10), dtype=np.int64))
    sink = RecordingSink()
    with pytest.raises(ValueError, match=r"song bad: prompt tokens must be \[1, n\]"):
        _generator(tiny, tok, GREEDY, max_duration=recorded.seconds).generate([good, bad], sink)
    assert sink.tokens == {} and sink.steps == {}


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_quantised_model_generates_fresh_songs(tok, cases, tmp_path, kv_bits):
    """A fresh song has no history to embed: quantised embeddings must never see an empty array (three songs
    through two slots: first fills and a refill, with and without prompts), with float or 8-bit caches."""
    official = write_official_checkpoint(tmp_path / "official", {"lm": {"num_heads": 2}}, seed=4)
    q4 = load_lm(write_public_mlx_checkpoint(tmp_path / "q4", official, bits=4))
    cfg = replace(q4.config, delays=SHORT_DELAYS)
    songs = _short_songs(cases)
    sink = RecordingSink()
    _generator(q4, tok, SAMPLED, cfg, batch_size=2, max_duration=0.8, kv_bits=kv_bits).generate(songs, sink)
    for song in songs:
        tokens = sink.tokens[song.idx]
        assert tokens.dtype == np.int64 and tokens.shape[0] == 3 and 0 < tokens.shape[1] <= 20
        assert sink.steps[song.idx][0] == (1, 24)


def test_v1_checkpoint_generates_without_a_description(fixtures, tmp_path):
    v1 = load_lm(write_official_checkpoint(tmp_path / "songgeneration_base", version="v1"))
    tok_v1 = TextTokenizers.from_dir(fixtures / "qwen2_tokenizer", "v1")
    sink = RecordingSink()
    _generator(v1, tok_v1, GREEDY, max_duration=0.8).generate([SongRequest("a", "[verse] la la", None, None, 0)], sink)
    assert sink.tokens["a"].shape[-1] == 20
