"""LM conditioning against upstream's recorded tensors (fixtures/lm_tiny): config, tokenizers, conditioners."""

import json
import logging
import shutil

import mlx.core as mx
import numpy as np
import pytest
import yaml
from fixture_meta import lm_arrays, lm_cases
from mlx.utils import tree_flatten

from levo_batch.lm.conditioners import (
    ConditionProvider,
    banned_prompt_ids,
    condition_inputs,
    lm_prompt_codes,
)
from levo_batch.lm.config import LMConfig
from levo_batch.lm.tokenizer import TextTokenizers

PROVIDER = "audiolm.condition_provider."


@pytest.fixture(scope="module")
def cases():
    return lm_cases()


@pytest.fixture(scope="module")
def cfg(fixtures):
    return LMConfig.from_upstream(yaml.safe_load((fixtures / "lm_tiny" / "config.yaml").read_text()))


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab+merges"])
def tok(request, fixtures, tmp_path_factory):
    src = fixtures / "qwen2_tokenizer"
    if request.param == "tokenizer.json":
        return TextTokenizers.from_dir(src)
    folder = tmp_path_factory.mktemp("qwen_plain")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, folder / name)
    return TextTokenizers.from_dir(folder)


@pytest.fixture(scope="module")
def provider(fixtures, cfg):
    weights = mx.load(str(fixtures / "lm_tiny" / "model.safetensors"))
    model = ConditionProvider(cfg)
    model.load_weights([(k[len(PROVIDER) :], v) for k, v in weights.items() if k.startswith(PROVIDER)], strict=True)
    return model


def _job(job):
    arrays = lm_arrays(job["name"])
    prompt = arrays["prompt_tokens"]
    return arrays, (None if prompt.size == 0 else prompt[0])


def _inputs(tok, cfg, job, prompt):
    g = job["codeclm_generate_inputs"]
    return condition_inputs(tok, cfg, g["lyrics"][0], g["descriptions"][0], prompt)


def test_config_from_upstream_yaml(cfg):
    assert (cfg.dim, cfg.num_heads, cfg.head_dim, cfg.num_layers, cfg.num_layers_sub) == (12, 2, 6, 3, 2)
    assert cfg.prefix_len == 952 and cfg.prompt_frames == 250 and cfg.delays == (0, 250, 250)
    assert (cfg.eos_id, cfg.special_id) == (16384, 16385)
    assert (cfg.lyrics_vocab, cfg.description_vocab) == (151659, 151652)
    assert cfg.cfg_coef == 1.5 and cfg.max_dur == 150.0 and cfg.quantization is None


def test_config_resolves_release_interpolations(fixtures, cfg):
    raw = yaml.safe_load((fixtures / "lm_tiny" / "config.yaml").read_text())
    conds = raw["conditioners"]
    conds["prompt_audio"]["qt_embedding"]["max_len"] = "${eval:${prompt_len}*${audio_tokenizer_frame_rate}+2}"
    conds["description"]["QwTokenizer"]["add_token_list"] = "${load_yaml:conf/vocab.yaml}"
    assert LMConfig.from_upstream(raw) == cfg
    conds["type_info"]["QwTextTokenizer"]["max_len"] = "${eval:__import__('os').getpid()}"
    with pytest.raises(ValueError, match="cannot resolve `conditioners.type_info.QwTextTokenizer.max_len"):
        LMConfig.from_upstream(raw)
    del raw["lm"]["dim"]
    with pytest.raises(KeyError, match="no `lm.dim` entry"):
        LMConfig.from_upstream(raw)


def test_config_mlx_round_trip(cfg):
    quantized = LMConfig.from_mlx({**cfg.to_mlx(), "quantization": {"bits": 4, "group_size": 32}})
    assert LMConfig.from_mlx(json.loads(json.dumps(cfg.to_mlx()))) == cfg
    assert quantized.quantization == {"bits": 4, "group_size": 32}
    assert quantized.to_mlx()["quantization"] == {"bits": 4, "group_size": 32}


def test_config_from_public_mlx_layout():
    public = {
        "format": "songgeneration-mlx-audiolm",
        "runtime": {"hidden_size": 1536, "intermediate_size": 8960, "num_heads": 12, "num_layers": 28,
                    "num_layers_sub": 12, "prompt_len": 10, "frame_rate": 25, "rope_theta": 500000.0},
        "quantization": {"bits": 8, "group_size": 64, "mode": "affine"},
    }
    cfg = LMConfig.from_mlx(public)
    assert (cfg.dim, cfg.head_dim, cfg.num_layers, cfg.intermediate_size) == (1536, 128, 28, 8960)
    assert cfg.quantization == {"bits": 8, "group_size": 64} and cfg.prefix_len == 952


def test_added_vocabularies(tok, cases, cfg):
    added = cases["added_vocab"]
    assert {t: tok.lyrics.token_to_id(t) for t in added["description"]} == added["description"]
    assert {t: tok.description.token_to_id(t) for t in added["type_info"]} == added["type_info"]
    assert tok.lyrics.get_vocab_size() == cfg.lyrics_vocab
    assert tok.description.get_vocab_size() == cfg.description_vocab


def test_v1_tokenizers_keep_plain_qwen2_dots_and_descriptions(fixtures):
    """v1 releases were trained before `.` became a special lyric token and before the description tags."""
    v1 = TextTokenizers.from_dir(fixtures / "qwen2_tokenizer", "v1")
    v2 = TextTokenizers.from_dir(fixtures / "qwen2_tokenizer")
    assert v1.encode_lyrics("[verse] hold on...")[1] == v2.encode_lyrics("[verse] hold on...")[1] == 151646
    assert v2.encode_lyrics("[verse] hold on...")[-3:] == [13, 13, 13]
    assert [v1.lyrics.id_to_token(i) for i in v1.encode_lyrics("[verse] hold on...")[-1:]] == ["..."]
    assert v1.structure_ids == v2.structure_ids
    assert v1.description.get_vocab_size() == 151646 and v1.description.token_to_id("[Pure-Music]") is None
    assert max(v1.encode_description("[Musicality-very-high], pop")) < 151646
    assert v1.encode_description(None) == [151644]


def test_v1_condition_inputs_without_description(fixtures, cfg):
    v1 = TextTokenizers.from_dir(fixtures / "qwen2_tokenizer", "v1")
    got = condition_inputs(v1, cfg.with_version("v1"), "[verse] la la", None, None)
    assert got.description_ids[:, 0].tolist() == [151644, 151644]
    assert (got.description_ids[:, 1:] == 151643).all()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_text_that_will_be_cut_is_reported_naming_the_song_and_limit(tok, cfg):
    logger, records = logging.getLogger("levo_batch.lm.conditioners"), _Records()
    logger.addHandler(records)
    try:
        fits = "[verse] " + " ".join(["la"] * (cfg.lyrics_max_len - 2))  # + <|im_start|> and [verse]: 600
        assert len(tok.encode_lyrics(fits)) == cfg.lyrics_max_len
        condition_inputs(tok, cfg, fits, "[Musicality-very-high], pop", None, song="fine")
        assert records.messages == []
        condition_inputs(tok, cfg, fits + " la la", "[Musicality-very-high], " + "pop, " * 60, None, song="s7")
        condition_inputs(tok, cfg, fits + " la la", "pop", None)  # no song named: cut silently
    finally:
        logger.removeHandler(records)
    assert records.messages == [
        "song s7: lyrics too long: 602 tokens (<|im_start|> included) for the LM's limit of 600; the last 2 are "
        "cut, as upstream does. Shorten the lyrics to keep all of it",
        "song s7: description too long: 124 tokens (<|im_start|> included) for the LM's limit of 100; the last 24 "
        "are cut, as upstream does. Shorten the description to keep all of it",
    ]


def test_hash_merges_are_dropped_like_upstream(tok):
    assert tok.description.encode("### Title ## and #1").ids == [2, 2, 2, 10869, 671, 2, 323, 671, 16]


def test_token_ids_match_upstream(tok, cases):
    for job in cases["jobs"]:
        for name, encode in (("description", tok.encode_lyrics), ("type_info", tok.encode_description)):
            rec = job["text_conditioning"][name]
            for row in range(2):
                n = rec["lengths"][row]
                assert encode(rec["attribute"][row]) == rec["input_ids"][row][:n], (job["name"], name, row)


def test_missing_tokenizer_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json, or vocab.json \\+ merges.txt"):
        TextTokenizers.from_dir(tmp_path)


def test_condition_inputs_match_upstream(tok, cfg, cases):
    for job in cases["jobs"]:
        arrays, prompt = _job(job)
        got = _inputs(tok, cfg, job, prompt)
        assert got.lyric_ids.dtype == np.int32 and got.prompt_codes.shape == (2, 3, 251)
        np.testing.assert_array_equal(got.lyric_ids, arrays["description_tokens"], err_msg=job["name"])
        np.testing.assert_array_equal(got.lyric_structure, arrays["description_structure_ids"], err_msg=job["name"])
        np.testing.assert_array_equal(got.description_ids, arrays["type_info_tokens"], err_msg=job["name"])
        np.testing.assert_array_equal(got.prompt_codes, arrays["prompt_audio_wav"], err_msg=job["name"])


def test_null_rows(tok, cfg):
    blank = np.array([151644] + [151643] * 99)
    high = condition_inputs(tok, cfg, "[verse] la la", "[Musicality-very-high], pop", None)
    assert high.lyric_ids[1, 0] == 151644 and (high.lyric_ids[1, 1:] == 151643).all()
    assert (high.lyric_structure[1] == 0).all() and (high.prompt_codes[1] == 16385).all()
    swapped = tok.encode_description("[Musicality-very-low], .")
    np.testing.assert_array_equal(high.description_ids[1, : len(swapped)], swapped)
    assert swapped[1] == 151650
    plain = condition_inputs(tok, cfg, ".", ".", np.zeros((3, 250), dtype=np.int64))
    np.testing.assert_array_equal(plain.description_ids[1], blank)
    assert (plain.prompt_codes[1] == 16385).all() and (plain.prompt_codes[0, :, 0] == 16384).all()


def test_structure_ids_computed_before_cut(tok, cfg):
    lyrics = "[verse] " + "la " * 700 + "; [chorus] end"
    got = condition_inputs(tok, cfg, lyrics, ".", None)
    assert got.lyric_structure[0, 0] == 0 and (got.lyric_structure[0, 1:] == 1).all()
    assert got.lyric_ids.shape == (2, 600) and 151647 not in got.lyric_ids


def test_lm_prompt_codes(cfg, cases):
    for job in cases["jobs"]:
        arrays, prompt = _job(job)
        np.testing.assert_array_equal(lm_prompt_codes(prompt, cfg), arrays["audio_qt_embs"][0], err_msg=job["name"])
    mixed = lm_prompt_codes(np.arange(300)[None], cfg)
    assert mixed.shape == (3, 250) and mixed.dtype == np.int32
    np.testing.assert_array_equal(mixed[0], np.arange(250))
    assert (mixed[1:] == 16385).all() and (lm_prompt_codes(None, cfg) == 16385).all()
    with pytest.raises(ValueError, match=r"\[1, n\] \(mixed row\) or \[3, n\]"):
        lm_prompt_codes(np.zeros((2, 10)), cfg)


def test_banned_prompt_ids(cfg):
    prompt = np.array([[5, 3, 5, 16385, 16384, 7], [1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2]])
    np.testing.assert_array_equal(banned_prompt_ids(prompt, cfg), [3, 5, 7])
    assert banned_prompt_ids(None, cfg).size == 0


def test_provider_parameters_are_upstream_keys(cfg, cases):
    expected = {k[len(PROVIDER) :]: v for k, v in cases["state_dict_keys"].items() if k.startswith(PROVIDER)}
    got = {k: list(v.shape) for k, v in tree_flatten(ConditionProvider(cfg).parameters())}
    assert got == expected


def test_prefix_matches_upstream_conditions(tok, cfg, cases, provider):
    for job in cases["jobs"]:
        arrays, prompt = _job(job)
        inputs = _inputs(tok, cfg, job, prompt)
        s1, s2 = (np.array(s) for s in provider.prefix(inputs))
        lyr, desc = slice(0, 600), slice(852, 952)
        assert s1.shape == (2, cfg.prefix_len, cfg.dim)
        for got, want in ((s1[:, lyr], "cond_description"), (s2[:, lyr], "cond_description"),
                          (s1[:, 600:852], "cond_prompt_audio_1"), (s2[:, 600:852], "cond_prompt_audio_2"),
                          (s1[:, desc], "cond_type_info"), (s2[:, desc], "cond_type_info")):
            np.testing.assert_allclose(got, arrays[want], atol=1e-6, rtol=0, err_msg=f"{job['name']} {want}")
        np.testing.assert_allclose(s1, arrays["tf_fused1"][:, :952], atol=1e-6, rtol=0)
        np.testing.assert_allclose(s2, arrays["tf_fused2"][:, :952], atol=1e-6, rtol=0)
