"""LeVo 2 LM hyper-parameters, read from upstream's `config.yaml` or from an MLX conversion's `config.json`.

Only the values that change the computation live here; everything upstream keeps for training (dropouts,
optimiser settings, ...) is ignored. Text-table sizes are not in upstream's config: they follow from the
Qwen2 base vocabulary plus the tags each conditioner adds at run time, so they are derived the same way.
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass, fields, replace

from levo_batch.text import DESCRIPTION_TAGS, STRUCTURE_TAGS

QWEN2_BASE_VOCAB = 151646
"""Qwen2's 151643 byte-level BPE ids plus its three special tokens (<|endoftext|>, <|im_start|>, <|im_end|>).

Upstream appends its tags (and `.`, which already exists as id 13, so it adds no row) to this vocabulary."""

V2_RELEASE_MAX_DUR = 270.0
"""`max_dur` of the v2 releases (4m30s in upstream's model table). Public MLX conversions that lost their
`config.official.yaml` get it: they exist only for v2 releases."""

LM_VERSIONS = ("v1", "v2")
"""Upstream's two text conventions. The LM itself is the same `LmModel` for both; v1 checkpoints
(songgeneration_base, _base_new, _base_full, _large) were trained without the description tags and without
`.` as a special lyric token, and see the description as plain lower-cased text (see `levo_batch.text`)."""

V1_FOLDERS = ("songgeneration_base", "songgeneration_base_new", "songgeneration_base_full", "songgeneration_large")
"""Upstream's rule: a checkpoint folder with one of these names (lower-cased, `-` read as `_`) is v1, any
other name is v2."""

MLX_FORMAT = "levo-batch-lm"
AILUNTX_FORMAT = "songgeneration-mlx-audiolm"
"""`format` of the public MLX conversions (ailuntx/SongGeneration-MLX, mlx-community/SongGeneration-v2-*)."""


@dataclass(frozen=True)
class LMConfig:
    dim: int
    intermediate_size: int
    num_heads: int
    num_layers: int
    num_layers_sub: int
    code_depth: int = 3
    code_size: int = 16384
    rope_theta: float = 500000.0
    rope_theta_sub: float = 500000.0
    delays: tuple[int, ...] = (0, 250, 250)
    lyrics_max_len: int = 600
    description_max_len: int = 100
    prompt_max_len: int = 252
    prompt_frames: int = 250
    cfg_coef: float = 1.5
    max_dur: float = V2_RELEASE_MAX_DUR
    frame_rate: int = 25
    lyrics_vocab: int = 151659
    description_vocab: int = 151652
    structure_vocab: int = 200
    quantization: dict | None = None
    version: str = "v2"

    def __post_init__(self):
        if self.version not in LM_VERSIONS:
            raise ValueError(f"unknown LM version {self.version!r}; expected one of {', '.join(LM_VERSIONS)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def prefix_len(self) -> int:
        """Conditioning positions before the first audio token: lyrics, prompt (EOT + codes), description."""
        return self.lyrics_max_len + self.prompt_max_len + self.description_max_len

    @property
    def eos_id(self) -> int:
        return self.code_size

    @property
    def special_id(self) -> int:
        return self.code_size + 1

    @classmethod
    def from_upstream(cls, cfg: dict, version: str = "v2") -> "LMConfig":
        """From upstream's `config.yaml` as parsed by pyyaml (its OmegaConf interpolations are resolved here).

        `version` is not in the file: upstream takes it from the folder name (`version_of_folder`)."""

        def get(path: str):
            return _upstream_value(cfg, path)

        text = "conditioners.description.QwTokenizer."
        lyric_tags = [t for t in (get(text + "add_token_list") or []) if t != "."]
        return cls(
            dim=int(get("lm.dim")),
            intermediate_size=int(get("lm.intermediate_size")),
            num_heads=int(get("lm.num_heads")),
            num_layers=int(get("lm.num_layers")),
            num_layers_sub=int(get("lm.num_layers_sub")),
            code_depth=int(get("lm.code_depth")),
            code_size=int(get("lm.code_size")),
            rope_theta=float(get("lm.rope_theta")),
            rope_theta_sub=float(get("lm.rope_theta_sub")),
            delays=tuple(int(d) for d in get("codebooks_pattern.delay.delays")),
            lyrics_max_len=int(get(text + "max_len")),
            description_max_len=int(get("conditioners.type_info.QwTextTokenizer.max_len")),
            prompt_max_len=int(get("conditioners.prompt_audio.qt_embedding.max_len")),
            prompt_frames=int(get("prompt_len") * get("audio_tokenizer_frame_rate")),
            cfg_coef=float(get("classifier_free_guidance.inference_coef")),
            max_dur=float(get("max_dur")),
            frame_rate=int(get("audio_tokenizer_frame_rate")),
            lyrics_vocab=QWEN2_BASE_VOCAB + len(lyric_tags),
            description_vocab=description_vocab(version),
            version=version,
        )

    def with_version(self, version: str) -> "LMConfig":
        """This config read with the other version's text conventions (`--lm-version`)."""
        return replace(self, version=version, description_vocab=description_vocab(version))

    @classmethod
    def from_mlx(cls, cfg: dict) -> "LMConfig":
        """From a conversion's `config.json`: ours (`to_mlx`) or the public ailuntx/mlx-community layout.

        The public layout keeps its sizes under `runtime` with its own names; values it does not record
        (text lengths, delays, max_dur, table sizes) are the v2 release values, which is what its runtime
        hard-codes too (those conversions exist only for v2 releases).
        """
        if cfg.get("format") == AILUNTX_FORMAT or "runtime" in cfg:
            rt = cfg["runtime"]
            return cls(
                dim=int(rt["hidden_size"]),
                intermediate_size=int(rt["intermediate_size"]),
                num_heads=int(rt["num_heads"]),
                num_layers=int(rt["num_layers"]),
                num_layers_sub=int(rt["num_layers_sub"]),
                code_depth=int(rt.get("code_depth", 3)),
                code_size=int(rt.get("code_size", 16384)),
                rope_theta=float(rt.get("rope_theta", 500000.0)),
                rope_theta_sub=float(rt.get("rope_theta_sub", 500000.0)),
                prompt_frames=int(rt.get("prompt_len", 10) * rt.get("frame_rate", 25)),
                cfg_coef=float(rt.get("cfg_coef", cls.cfg_coef)),
                frame_rate=int(rt.get("frame_rate", 25)),
                quantization=_quantization(cfg.get("quantization")),
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in cfg.items() if k in known}
        values["delays"] = tuple(values.get("delays", cls.delays))
        values["quantization"] = _quantization(values.get("quantization"))
        return cls(**values)

    def to_mlx(self) -> dict:
        """The `config.json` written next to converted weights (JSON types only)."""
        out = {"format": MLX_FORMAT, **asdict(self)}
        out["delays"] = list(self.delays)
        if self.quantization is None:
            del out["quantization"]
        if self.version == "v2":
            del out["version"]  # the default: v2 conversions keep the config (and model id) they always had
        return out


def description_vocab(version: str) -> int:
    """Rows of the description (`type_info`) table: v2 appends its tags (`.` already exists), v1 adds none."""
    return QWEN2_BASE_VOCAB + (len(DESCRIPTION_TAGS) if version == "v2" else 0)


def version_of_folder(folder: str) -> str:
    """Upstream's folder-name rule (generate.py's `__main__`): v1 for the four v1 release names, else v2."""
    return "v1" if folder_key(folder) in V1_FOLDERS else "v2"


def folder_key(folder: str) -> str:
    """A checkpoint folder's name as upstream compares it: last path component, lower case, `-` -> `_`."""
    return str(folder).rstrip("/").rsplit("/", 1)[-1].lower().replace("-", "_")


def _quantization(q: dict | None) -> dict | None:
    """Keep only what `mlx.nn.quantize` needs; mlx-lm and ailuntx both store `bits`/`group_size` (+ `mode`)."""
    if not q:
        return None
    out = {"bits": int(q["bits"]), "group_size": int(q.get("group_size", 64))}
    if q.get("mode", "affine") != "affine":
        out["mode"] = str(q["mode"])
    return out


_REF = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_ARITHMETIC = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
               ast.FloorDiv, ast.USub)


def _upstream_value(cfg: dict, path: str):
    """A config.yaml entry with upstream's interpolations resolved.

    Release configs write e.g. `max_len: ${eval:${prompt_len}*${audio_tokenizer_frame_rate}+2}` and
    `add_token_list: ${load_yaml:conf/vocab.yaml}` (OmegaConf resolvers registered by upstream's code);
    `conf/vocab.yaml` is exactly `STRUCTURE_TAGS`.
    """
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config.yaml has no `{path}` entry; is this a SongGeneration LM config?")
        node = node[part]
    if not isinstance(node, str) or "${" not in node:
        return node
    raw = node
    while _REF.search(node):
        node = _REF.sub(lambda m: str(_upstream_value(cfg, m.group(1))), node)
    if node.startswith("${load_yaml:") and node.rstrip("}").endswith("vocab.yaml"):
        return list(STRUCTURE_TAGS)
    if node.startswith("${eval:") and node.endswith("}"):
        tree = ast.parse(node[len("${eval:") : -1], mode="eval")
        if all(isinstance(n, _ARITHMETIC) for n in ast.walk(tree)):
            return eval(compile(tree, "config.yaml", "eval"))
    raise ValueError(f"config.yaml: cannot resolve `{path}: {raw}`; replace it by its value")
