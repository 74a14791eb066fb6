"""Adapters in Hugging Face PEFT's format: `encvit export --format peft` and `encvit import`.

encvit's LoRA of rank r on q and v is one PEFT LoRA of rank 2r on the fused qkv layer: ``lora_A = [A_q; A_v]``
and ``lora_B = [[B_q, 0], [0, 0], [0, B_v]]`` (the k rows zero), with ``lora_alpha = 2 alpha`` so that PEFT's scale
lora_alpha / r is encvit's alpha / rank. The head (and, for proposed, the patch embedding) are PEFT's
``modules_to_save``. encvit's metadata rides along in the safetensors header under "encvit.", so that the folder
imports back unchanged. Only safetensors and json are needed: peft itself is not imported here.

    DIR/adapter_config.json        LoraConfig's fields
    DIR/adapter_model.safetensors  base_model.model.blocks.{i}.attn.qkv.lora_A.weight, ..., head.weight, ...
    DIR/README.md                  the three lines that load it
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..common.atomic import atomic_path, write_text
from ..common.errors import AdapterError, ConfigError, check_output_path
from .adapters import AdapterInfo, read_adapter
from .backbones import create_backbone, create_skeleton, weights_hash
from .methods import LORA_METHODS, is_trained, prepare, trainable_parameters

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "adapter_file",
    "check_fits",
    "export_peft",
    "from_peft",
    "import_peft",
    "peft_base",
    "peft_config",
    "read_peft",
    "saved_modules",
    "to_peft",
]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the model as base_model.model
META_PREFIX = "encvit."
SAVABLE_MODULES = ("patch_embed.proj", "head")  # what a LoRA method may train besides LoRA (see methods.is_trained)
ENCVIT_LORA_NAME = "blocks.{block}.attn.qkv.parametrizations.weight.0.lora_{matrix}_{rows}"  # see encvit.models.lora
ENCVIT_LORA = re.compile(ENCVIT_LORA_NAME.replace(".", r"\.").format(block=r"(\d+)", matrix="([AB])", rows="([qv])"))
PEFT_LORA = re.compile(r"base_model\.model\.blocks\.(\d+)\.attn\.qkv\.lora_([AB])\.weight")
# LoraConfig fields whose other values change what the update computes; encvit's LoRA has none of them
PLAIN_LORA = {
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "lora_bias": False,
    "bias": "none",
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
}


def adapter_file(path: str | os.PathLike) -> Path:
    """A run directory's adapter.safetensors, or `path` itself (as `encvit evaluate` reads it)."""
    path = Path(path)
    return path / "adapter.safetensors" if path.is_dir() else path


def saved_modules(method: str) -> list[str]:
    """PEFT's modules_to_save for a LoRA method: the modules it trains besides LoRA."""
    return [name for name in SAVABLE_MODULES if is_trained(name + ".weight", method)]


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def peft_config(info: AdapterInfo) -> dict:
    """adapter_config.json for an encvit LoRA adapter (the LoraConfig fields; PEFT fills in the rest)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "auto_mapping": {"base_model_class": "VisionTransformer", "parent_library": "timm.models.vision_transformer"},
        "r": 2 * info.rank,
        "lora_alpha": _number(2 * info.alpha),
        "lora_dropout": 0.0,
        **PLAIN_LORA,
        "target_modules": ["qkv"],
        "modules_to_save": saved_modules(info.method),
        "init_lora_weights": True,
        "inference_mode": True,
    }


def to_peft(tensors: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """encvit's adapter tensors under PEFT's names, q and v LoRA joined into one rank-2r LoRA per qkv layer."""
    parts: dict[int, dict[str, torch.Tensor]] = {}
    peft = {}
    for name, tensor in tensors.items():
        if match := ENCVIT_LORA.fullmatch(name):
            block, matrix, rows = match.groups()
            parts.setdefault(int(block), {})[matrix + rows] = tensor
        else:
            peft[PEFT_PREFIX + name] = tensor
    for block, p in sorted(parts.items()):
        dim = p["Bq"].shape[0]
        lora_B = p["Bq"].new_zeros(3 * dim, 2 * rank)
        lora_B[:dim, :rank] = p["Bq"]
        lora_B[2 * dim :, rank:] = p["Bv"]
        prefix = f"{PEFT_PREFIX}blocks.{block}.attn.qkv."
        peft[prefix + "lora_A.weight"] = torch.cat([p["Aq"], p["Av"]]).contiguous()
        peft[prefix + "lora_B.weight"] = lora_B
    return peft


def from_peft(tensors: dict[str, torch.Tensor], rank: int, source: str) -> dict[str, torch.Tensor]:
    """PEFT's tensors back under encvit's names; refuses a LoRA that is not a rank-r update of q and v."""
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    encvit = {}
    for name, tensor in tensors.items():
        if match := PEFT_LORA.fullmatch(name):
            pairs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        else:
            encvit[name.removeprefix(PEFT_PREFIX)] = tensor
    for block, pair in sorted(pairs.items()):
        name = f"{PEFT_PREFIX}blocks.{block}.attn.qkv.lora_B.weight"
        lora_A, lora_B = pair.get("A"), pair.get("B")
        if lora_A is None or lora_B is None:
            raise AdapterError(
                f"{source}: block {block}'s qkv layer has lora_{'B' if lora_A is not None else 'A'} "
                f"only; a LoRA needs both"
            )
        if lora_A.ndim != 2 or lora_A.shape[0] != 2 * rank or lora_B.shape != (3 * lora_A.shape[1], 2 * rank):
            raise AdapterError(
                f"{source}: block {block}'s lora_A and lora_B have shapes {tuple(lora_A.shape)} and "
                f"{tuple(lora_B.shape)}; rank {rank} needs (2*rank, dim) and (3*dim, 2*rank)"
            )
        dim = lora_A.shape[1]
        if lora_B[dim : 2 * dim].any():
            raise AdapterError(f"{source}: {name} has non-zero k rows; encvit's LoRA updates only q and v")
        if lora_B[:dim, rank:].any() or lora_B[2 * dim :, :rank].any():
            raise AdapterError(
                f"{source}: {name} mixes q and v (its q rows read the v half of lora_A or the "
                f"reverse); encvit's LoRA is two rank-{rank} updates, one of q and one of v"
            )
        for matrix, rows, part in (
            ("A", "q", lora_A[:rank]),
            ("A", "v", lora_A[rank:]),
            ("B", "q", lora_B[:dim, :rank]),
            ("B", "v", lora_B[2 * dim :, rank:]),
        ):
            encvit[ENCVIT_LORA_NAME.format(block=block, matrix=matrix, rows=rows)] = part.clone()
    return encvit


def _readme(info: AdapterInfo, folder: str) -> str:
    key = (
        f"encrypted with the key whose fingerprint is {info.key_fingerprint} (`encvit encrypt`)"
        if info.key_fingerprint
        else "not encrypted"
    )
    trains = "LoRA on q and v" + (" and the patch embedding" if info.method == "proposed" else "")
    classes = ", ".join(info.class_names[:10]) + (", ..." if info.num_classes > 10 else "")
    quoted = json.dumps(folder)
    return (
        f"# encvit {info.method} adapter in PEFT's format\n\n"
        f"{trains} of `{info.backbone}` (weights hash {info.backbone_hash}) with a {info.num_classes}-class head "
        f"({classes}), trained on {info.dataset or 'a dataset'}. Load it with PEFT:\n\n"
        f"```python\nfrom peft import PeftModel\nfrom encvit.models import peft_base\n"
        f"model = PeftModel.from_pretrained(peft_base({quoted}), {quoted}).eval()\n```\n\n"
        f'`peft_base` builds `encvit.models.backbones.create_backbone("{info.backbone}")`, gives it a '
        f"{info.num_classes}-class head (`reset_classifier({info.num_classes})`) and checks its weights hash. "
        f"Inputs: {info.image_size}x{info.image_size} images with {info.channels} channels, {key}, normalised "
        f"with mean {info.mean} and std {info.std}. `model.merge_and_unload()` folds the LoRA into the qkv "
        f"weights; `encvit import {folder} --out adapter.safetensors` turns the folder back into an encvit "
        f"adapter.\n"
    )


def export_peft(adapter: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write an encvit LoRA adapter (file or run directory) as a PEFT folder `out`; refuses full and head adapters."""
    source = adapter_file(adapter)
    out = check_output_path(out, "--out", folder=True)
    if out.exists() and out.resolve() in (source.resolve(), *source.resolve().parents):
        raise ConfigError(f"--out {out} holds the adapter being exported; name another folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"folder {out} exists; pass --overwrite to replace it")
    info, tensors = read_adapter(source)
    if info.method not in LORA_METHODS:
        kind = {"full": "a full fine-tuning adapter", "head": "a plain head"}.get(info.method, info.method)
        raise AdapterError(
            f"adapter file {source} is {kind}, not a LoRA: only {' and '.join(LORA_METHODS)} adapters export to PEFT"
        )
    check_fits(info, tensors, f"adapter file {source}")
    with safe_open(source, "pt") as handle:
        metadata = handle.metadata()
    peft = to_peft(tensors, info.rank)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        # "format": "pt" is what PEFT and transformers write; encvit's fields keep their own prefix
        save_file(
            peft, staging / WEIGHTS_FILE, metadata={"format": "pt", **{META_PREFIX + k: v for k, v in metadata.items()}}
        )
        write_text(staging / CONFIG_FILE, json.dumps(peft_config(info), indent=2) + "\n")
        write_text(staging / "README.md", _readme(info, str(out)))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} holds no JSON object")
    return config


def _read_weights(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        return metadata, load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"{path} is truncated or corrupt ({exc})") from None


def read_peft(folder: str | os.PathLike) -> tuple[AdapterInfo, dict[str, str], dict[str, torch.Tensor]]:
    """The encvit metadata (parsed and as stored) and encvit-named tensors of a PEFT folder from `export_peft`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(
            f"{folder} is not a folder (a PEFT adapter is a folder with {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise AdapterError(f"{folder} has no {name}: it is not a PEFT adapter folder")
    config = _read_config(folder / CONFIG_FILE)
    source = str(folder)
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{source} is a PEFT {config.get('peft_type')} adapter, not a LoRA")
    for option, plain in PLAIN_LORA.items():
        if config.get(option, plain) not in (plain, None):
            raise AdapterError(f"{source} uses PEFT's {option}={config[option]!r}, which encvit's LoRA does not have")
    targets = config.get("target_modules")
    if targets not in (["qkv"], "qkv"):
        raise AdapterError(
            f"{source} targets {targets!r}; encvit's LoRA targets only the attention's qkv "
            f"layers (target_modules ['qkv'])"
        )
    metadata, tensors = _read_weights(folder / WEIGHTS_FILE)
    other = sorted(n for n in tensors if "lora_" in n and not PEFT_LORA.fullmatch(n))
    if other:
        raise AdapterError(f"{source} has LoRA on other modules than the qkv layers ({other[0]})")
    stored = {k.removeprefix(META_PREFIX): v for k, v in metadata.items() if k.startswith(META_PREFIX)}
    if not stored:
        raise AdapterError(
            f"{source}/{WEIGHTS_FILE} has no encvit metadata (backbone, weights hash, classes, key "
            f"fingerprint): only folders written by `encvit export --format peft` can be imported"
        )
    info = AdapterInfo.from_metadata(stored, f"{source}/{WEIGHTS_FILE}")
    _check_config(config, info, source)
    tensors = from_peft(tensors, info.rank, source)
    check_fits(info, tensors, source)
    return info, stored, tensors


def check_fits(info: AdapterInfo, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse encvit-named tensors that are not what `info`'s method trains on its backbone (names and shapes)."""
    skeleton = prepare(
        create_skeleton(info.backbone, info.image_size), info.method, info.num_classes, info.rank, info.alpha
    )  # on the meta device: no memory, no weights
    wanted = {name: tuple(p.shape) for name, p in trainable_parameters(skeleton).items()}
    missing, extra = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
    if missing or extra:
        raise AdapterError(
            f"{source} does not fit a {info.method} adapter of {info.backbone}: missing "
            f"{missing[:2]}, unexpected {extra[:2]}"
        )
    for name, shape in wanted.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterError(
                f"{source} does not fit: {name} has shape {tuple(tensors[name].shape)}, a "
                f"{info.num_classes}-class {info.method} adapter of {info.backbone} needs {shape}"
            )


def _check_config(config: dict, info: AdapterInfo, source: str) -> None:
    """Refuse an adapter_config.json that disagrees with the folder's encvit metadata, naming the first field."""
    if info.method not in LORA_METHODS:
        raise AdapterError(f"{source}'s encvit metadata names method {info.method!r}, not a LoRA method")
    for option, want in (("r", 2 * info.rank), ("lora_alpha", 2 * info.alpha)):
        if config.get(option) != want:
            raise AdapterError(
                f"{source}: {CONFIG_FILE} has {option} {config.get(option)!r}; the encvit metadata "
                f"(rank {info.rank}, alpha {info.alpha:g}) needs {_number(want)}"
            )
    modules, listed = saved_modules(info.method), config.get("modules_to_save") or []
    if not isinstance(listed, list) or sorted(map(str, listed)) != sorted(modules):
        raise AdapterError(
            f"{source}: {CONFIG_FILE} saves modules {config.get('modules_to_save')!r}; a "
            f"{info.method} adapter saves {modules}"
        )


def import_peft(folder: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> Path:
    """Write a PEFT folder from `export_peft` as an encvit adapter file `out` (metadata and tensors unchanged)."""
    out = check_output_path(out, "--out", folder=False)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    if out.exists() and out.resolve() == (Path(folder) / WEIGHTS_FILE).resolve():
        raise ConfigError(f"--out {out} is the PEFT folder's own weights file; name another file")
    _, stored, tensors = read_peft(folder)
    with atomic_path(out) as tmp:
        save_file(tensors, tmp, metadata=stored)
    return out


def peft_base(folder: str | os.PathLike, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """The backbone a PEFT folder from `export_peft` was trained on, with its head size: `PeftModel`'s base."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterError(f"{folder} has no {WEIGHTS_FILE}: it is not a PEFT adapter folder")
    stored = {k.removeprefix(META_PREFIX): v for k, v in _read_weights(path)[0].items() if k.startswith(META_PREFIX)}
    info = AdapterInfo.from_metadata(stored, str(path))
    model = create_backbone(info.backbone, weights=weights, image_size=info.image_size)
    if weights_hash(model) != info.backbone_hash:
        raise AdapterError(
            f"{path} was trained on {info.backbone} weights {info.backbone_hash}, these are {weights_hash(model)}"
        )
    model.reset_classifier(info.num_classes)
    return model.eval()
