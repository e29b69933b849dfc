"""SepTokenDecoder end to end: official file formats in a runtime folder, waveforms vs upstream (decoder_tiny)."""

import json
import shutil

import numpy as np
import pytest
import torch
from fixture_meta import decoder_arrays, decoder_case, decoder_cases, decoder_geometry
from safetensors.torch import load_file, save_file

import levo_batch.decoder.septoken as septoken_module
from levo_batch.decoder.septoken import SepTokenDecoder
from levo_batch.gen_types import GEN_TYPES
from levo_batch.runtime import RuntimePaths
from levo_batch.contracts import DecodeRequest, PromptAudio

SHORT = decoder_case(windows="several", duration="other")
"""The recorded run with non-default (short) flow windows: cheap to decode again."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_runtime(root, fixtures, **overrides) -> RuntimePaths:
    """A runtime folder in the official layout: septoken safetensors (+ levo_decoder.json for the tiny
    geometry), stable-audio VAE json and a torch `.ckpt` holding `{'state_dict': ...}`."""
    src = fixtures / "decoder_tiny"
    runtime = RuntimePaths(root)
    runtime.septoken.parent.mkdir(parents=True)
    runtime.vae_config.parent.mkdir(parents=True)
    shutil.copy(src / "septoken_model.safetensors", runtime.septoken)
    (runtime.septoken.parent / "levo_decoder.json").write_text(json.dumps({**decoder_geometry(), **overrides}))
    shutil.copy(src / "vae_config.json", runtime.vae_config)
    torch.save({"state_dict": load_file(src / "vae.safetensors")}, runtime.vae_weights)
    return runtime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, fixtures):
    return make_runtime(tmp_path_factory.mktemp("runtime"), fixtures)


@pytest.fixture(scope="module")
def runtime_4s(tmp_path_factory, fixtures):
    """Upstream's code2sound with the short windows and VAE chunks `SHORT` was recorded with."""
    return make_runtime(tmp_path_factory.mktemp("runtime4"), fixtures, duration=SHORT["code2sound_duration"],
                        vae_chunk_size=SHORT["vae_chunk_size"])


@pytest.fixture(scope="module")
def decoder(runtime):
    return SepTokenDecoder.load(runtime, device="cpu", batch_size=4)


def recorded_decodes(meta) -> dict[str, str]:
    """Decode kind -> prefix of its arrays in the case file, in decode order (the case's entry in config.json)."""
    return {d["gen_type"]: d["prefix"] for d in meta["decodes"]}


def gen_type_of(prefixes: dict[str, str]) -> str:
    """The generation type whose decodes are the recorded ones."""
    return next(t.name for t in GEN_TYPES.values() if [kind for _, kind in t.decodes] == list(prefixes))


def inject_recorded_noise(monkeypatch, case, prefixes: dict[str, str]):
    """Replace the seeded noise by the draws upstream recorded, keyed like the decoder asks for them."""
    def recorded(seed, key, shape):
        kind, what = key.split("/")
        prefix = prefixes[kind]
        name = f"{prefix}vae_bottleneck_noise" if what == "prompt" else f"{prefix}chunk{what[6:]}_noise_init"
        array = torch.from_numpy(case[name])
        return array[0] if name.endswith("noise_init") else array

    monkeypatch.setattr(septoken_module, "seeded_noise", recorded)


def decode_one(decoder, request):
    results = list(decoder.decode([request]))
    assert [idx for idx, _ in results] == [request.idx]
    return results[0][1]


@pytest.mark.parametrize("meta", decoder_cases(windows="one"), ids=lambda c: c["name"])
def test_waveforms_match_upstream(decoder, monkeypatch, meta):
    case, prefixes = decoder_arrays(meta), recorded_decodes(meta)
    gen_type = gen_type_of(prefixes)
    inject_recorded_noise(monkeypatch, case, prefixes)
    stems = decode_one(decoder, DecodeRequest(meta["name"], case["tokens"][0], gen_type, seed=0))
    expected = {stem: prefixes[kind] for stem, kind in GEN_TYPES[gen_type].decodes}
    assert set(stems) == set(expected)
    for stem, prefix in expected.items():
        ref = case[f"{prefix}wav"]
        assert stems[stem].dtype == np.float32 and stems[stem].shape == ref.shape
        np.testing.assert_allclose(stems[stem], ref, atol=1e-4, rtol=1e-4)


def test_long_song_windows_crossfaded(decoder, monkeypatch):
    meta = decoder_case(windows="several")
    case = decoder_arrays(meta)
    inject_recorded_noise(monkeypatch, case, recorded_decodes(meta))
    wav = decode_one(decoder, DecodeRequest("long", case["tokens"][0], "mixed", seed=0))["main"]
    assert wav.shape == (2, int(case["d0_wav_len"])) == tuple(meta["decodes"][0]["wav_shape"])
    head, tail = case["d0_wav_head"], case["d0_wav_tail"]
    np.testing.assert_allclose(wav[:, : head.shape[1]], head, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(wav[:, -tail.shape[1] :], tail, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(wav.astype(np.float64).sum(1), case["d0_wav_sum_f64"], atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose((wav.astype(np.float64) ** 2).sum(1), case["d0_wav_sumsq_f64"], rtol=1e-5)


def test_non_default_window_duration(runtime_4s, monkeypatch):
    case = decoder_arrays(SHORT)
    inject_recorded_noise(monkeypatch, case, recorded_decodes(SHORT))
    decoder = SepTokenDecoder.load(runtime_4s, device="cpu", batch_size=4)
    wav = decode_one(decoder, DecodeRequest("d4", case["tokens"][0], "mixed", seed=0))["main"]
    np.testing.assert_allclose(wav, case["d0_wav"], atol=1e-4, rtol=1e-4)


def test_prompt_audio_conditions_first_window(fixtures, runtime, decoder, monkeypatch):
    encoder_module = pytest.importorskip("levo_batch.codec.septoken_encoder")
    from levo_batch.decoder.vae import load_vae

    meta = decoder_case(windows="one", prompt=True)
    case = decoder_arrays(meta)
    inject_recorded_noise(monkeypatch, case, recorded_decodes(meta))
    w2v2 = json.loads((fixtures / "decoder_tiny" / "w2v2_config_tiny.json").read_text())

    def prompt_models():
        vae = load_vae(runtime.vae_config, runtime.vae_weights, torch.device("cpu"), torch.float32,
                       parts=("encoder",))
        encoder = encoder_module.SepTokenEncoder.load(runtime.septoken, device="cpu", config=w2v2)
        return vae, encoder

    prompted = SepTokenDecoder(decoder.flow, decoder.vae, batch_size=4, prompt_models=prompt_models)
    prompt = PromptAudio(case["prompt_raw_vocal_wav"], case["prompt_raw_bgm_wav"])
    wav = decode_one(prompted, DecodeRequest("p", case["tokens"][0], "mixed", seed=0, prompt_audio=prompt))["main"]
    np.testing.assert_allclose(wav, case["d0_wav"], atol=1e-4, rtol=1e-4)


def test_plain_bgm_ignores_prompt_like_upstream(runtime_4s):
    """generate.py never hands prompt audio to a plain --bgm / --vocal decode."""
    decoder = SepTokenDecoder.load(runtime_4s, device="cpu", batch_size=2)
    tokens = decoder_arrays(decoder_case(windows="one"))["tokens"][0]
    silence = PromptAudio(np.zeros((2, 96000), np.float32), np.zeros((2, 96000), np.float32))
    with_prompt = decode_one(decoder, DecodeRequest("a", tokens, "bgm", seed=3, prompt_audio=silence))
    without = decode_one(decoder, DecodeRequest("a", tokens, "bgm", seed=3))
    np.testing.assert_array_equal(with_prompt["main"], without["main"])


class StubPromptModels:
    """Stands in for the VAE encoder and the septoken encoder; records which stems each prompt encode saw."""

    def __init__(self):
        self.seen = []

    def encode_audio(self, audio, noise):
        return torch.zeros(1, 64, audio.shape[-1] // 1920)

    def encode(self, vocal, bgm):
        self.seen.append((bool(vocal.abs().sum() > 0), bool(bgm.abs().sum() > 0)))
        n = vocal.shape[-1] // 1920 + 1
        return torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("on_stems,expected", [
    (True, [(True, False), (False, True), (True, True)]),  # vocal decode: bgm prompt zeroed; bgm: vocal zeroed
    (False, [(True, True)]),                               # generate_lowmem: mixed decode only
])
def test_prompt_routing_for_separate(runtime_4s, on_stems, expected):
    loaded = SepTokenDecoder.load(runtime_4s, device="cpu", batch_size=4)
    stub = StubPromptModels()
    decoder = SepTokenDecoder(loaded.flow, loaded.vae, batch_size=4, prompt_models=lambda: (stub, stub),
                              prompt_on_stems=on_stems)
    tokens = decoder_arrays(decoder_case(windows="one"))["tokens"][0][:, :30]
    prompt = PromptAudio(np.ones((2, 96000), np.float32), np.ones((2, 96000), np.float32))
    stems = decode_one(decoder, DecodeRequest("s", tokens, "separate", seed=0, prompt_audio=prompt))
    assert stub.seen == expected and {k: v.shape for k, v in stems.items()} == dict.fromkeys(stems, (2, 57600))
    decode_one(decoder, DecodeRequest("b", tokens, "bgm", seed=0, prompt_audio=prompt))
    assert stub.seen == expected


def test_batched_equals_alone_and_seeded(runtime_4s):
    """Batching changes only float rounding (GEMM blocking), ~1e-6; re-decoding is bit-identical."""
    tokens = decoder_arrays(SHORT)["tokens"][0]
    requests = [DecodeRequest("long", tokens, "mixed", seed=1),
                DecodeRequest("sep", tokens[:, :40], "separate", seed=2),
                DecodeRequest("bgm", tokens[:, :180], "bgm", seed=3)]
    batched = dict(SepTokenDecoder.load(runtime_4s, device="cpu", batch_size=4).decode(requests))
    single = SepTokenDecoder.load(runtime_4s, device="cpu", batch_size=1)
    assert set(batched) == {"long", "sep", "bgm"} and set(batched["sep"]) == {"main", "vocal", "bgm"}
    assert batched["long"]["main"].shape == tuple(SHORT["decodes"][0]["wav_shape"])
    assert batched["sep"]["vocal"].shape == (2, 76800)
    for request in requests:
        alone = decode_one(single, request)
        for stem, wav in alone.items():
            np.testing.assert_allclose(batched[request.idx][stem], wav, atol=1e-5, rtol=0)
    again = decode_one(single, requests[2])["main"]
    np.testing.assert_array_equal(again, decode_one(single, requests[2])["main"])
    reseeded = decode_one(single, DecodeRequest("bgm", tokens[:, :180], "bgm", seed=4))["main"]
    assert np.abs(reseeded - again).max() > 1e-3
    assert not np.allclose(batched["sep"]["main"], batched["sep"]["vocal"])


def test_a_songs_audio_does_not_depend_on_its_batch_mates(runtime_4s):
    """Issue 10, item 6: ±1 LSB on ~0.4 % of samples depended on which songs shared the decoder batch."""
    tokens = decoder_arrays(SHORT)["tokens"][0]
    song = DecodeRequest("song", tokens[:, :180], "mixed", seed=5)
    mates = [DecodeRequest("long", tokens, "mixed", seed=1), DecodeRequest("sep", tokens[:, :40], "separate", seed=2)]
    decoder = SepTokenDecoder.load(runtime_4s, device="cpu", batch_size=4)
    alone = decode_one(decoder, song)["main"]
    for batch in ([*mates, song], [song, mates[1]]):
        np.testing.assert_array_equal(dict(decoder.decode(batch))["song"]["main"], alone)


def test_missing_tensor_names_file_and_key(tmp_path, fixtures):
    runtime = make_runtime(tmp_path, fixtures)
    tensors = load_file(runtime.septoken)
    del tensors["cfm_wrapper.estimator.h.1.mlp.c_fc.weight"]
    save_file(tensors, str(runtime.septoken))
    with pytest.raises(KeyError, match=r"model_2.safetensors lacks 1 tensor.*h\.1\.mlp\.c_fc\.weight"):
        SepTokenDecoder.load(runtime, device="cpu", batch_size=4)


def test_geometry_file_required_for_non_official_weights(tmp_path, fixtures):
    runtime = make_runtime(tmp_path, fixtures)
    (runtime.septoken.parent / "levo_decoder.json").unlink()
    with pytest.raises(ValueError, match="levo_decoder.json"):
        SepTokenDecoder.load(runtime, device="cpu", batch_size=4)


def test_missing_runtime_file_points_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"septoken decoder weights not found.*levo-batch download"):
        SepTokenDecoder.load(RuntimePaths(tmp_path), device="cpu", batch_size=4)


def test_half_precision_checkpoint_loads(tmp_path, fixtures):
    runtime = make_runtime(tmp_path, fixtures)
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(runtime.septoken).items()}
    save_file(tensors, str(runtime.septoken))
    decoder = SepTokenDecoder.load(runtime, device="cpu", batch_size=4)
    assert decoder.flow.estimator.wpe.dtype == torch.float32
    assert decoder.fingerprint()["dtype"] == "float32"


@pytest.mark.parametrize("request_kwargs,message", [
    ({"gen_type": "instrumental"}, "gen_type 'instrumental'"),
    ({"tokens": np.full((3, 5), 16384)}, r"vocal/bgm tokens must lie in \[0, 16384\)"),
    ({"tokens": np.zeros((2, 5), np.int64)}, r"tokens must be \[3, T\]"),
    ({"prompt_audio": PromptAudio(np.zeros((1, 10)), np.zeros((1, 10)))}, "prompt vocal/bgm must both be"),
])
def test_bad_requests_rejected_before_work(decoder, request_kwargs, message):
    request = DecodeRequest("bad", np.zeros((3, 5), np.int64), "mixed", seed=0)
    for key, value in request_kwargs.items():
        setattr(request, key, value)
    with pytest.raises(ValueError, match=f"song bad: {message}"):
        list(decoder.decode([request]))


def test_fingerprint_is_json_and_names_weights(decoder):
    fp = decoder.fingerprint()
    json.dumps(fp)
    assert fp["septoken"].startswith("model_2.safetensors:")
    assert fp["config"]["n_layer"] == decoder_geometry()["n_layer"]
    assert fp["vae"].startswith("autoencoder_music_1320k.ckpt:") and fp["batch_size"] == 4
