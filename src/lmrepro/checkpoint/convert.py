"""Base checkpoints (Hugging Face or Meta Llama folders) → a DCP checkpoint, streamed tensor by tensor.

Source formats (``bases.<name>.format``):

* ``hf``: ``config.json`` + ``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
  Names are mapped by :mod:`.hf`; the rows of wq/wk are permuted from HF's rotate-half RoPE layout to
  ours (Meta's interleaved pairs).
* ``meta``: ``params.json`` + ``consolidated.NN.pth``, one file per model-parallel rank. Names and RoPE
  layout are already ours. Split tensors are concatenated: wq/wk/wv/w1/w3 and output along dim 0, wo/w2
  along dim 1, tok_embeddings along dim 1 (Llama 2's ``ParallelEmbedding``) or dim 0 (Llama 3's
  ``VocabParallelEmbedding``), told apart by the shard shapes; norms are replicated (checked equal).

Memory: the DCP is written from placeholders on the meta device, and a save planner loads each tensor
only when the writer asks for it, one file per tensor (the writer keeps a file's tensors alive until
the file is closed). Safetensors are read with plain reads; Meta files are memory-mapped and re-opened
every ~1 GiB so that touched pages do not pile up. Peak memory: about the largest tensor, twice.

Vocabulary (``bases.<name>.vocab``): ``keep`` converts everything and needs the run's vocabulary to
equal the base's; ``drop`` leaves ``tok_embeddings``/``output`` out (step-0 gets them from the run's
seeded random init: the gpt-neuro case of a new tokenizer); ``resize`` converts everything and step-0
copies the first min(V_base, V_run) rows and sets any new row to the mean of the base's rows, which
assumes the run's token ids extend (or truncate) the base's. ``conversion.json`` lists every missing,
unexpected and reshaped key. A run's step-0 is then made from the DCP by :mod:`.init_base`.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

from lmrepro.checkpoint import checksums
from lmrepro.checkpoint.dcp import CHECKPOINT_INFO, MODEL_PREFIX
from lmrepro.checkpoint.hf import (
    INDEX_FILE,
    from_hf_tensor,
    hf_name,
    hf_weight_files,
    is_rope_buffer,
    model_shapes,
    our_name,
    read_hf_config,
)
from lmrepro.checkpoint.safetensors_io import SafetensorsReader
from lmrepro.io import atomic_folder, write_json
from lmrepro.model.flavors import args_from_params_json, params_json
from lmrepro.model.llama import ModelArgs
from lmrepro.provenance import provenance

FORMATS = ("hf", "meta")
VOCAB_POLICIES = ("keep", "drop", "resize")
VOCAB_KEYS = ("tok_embeddings.weight", "output.weight")
CONVERSION = "conversion.json"


@dataclass
class BaseSource:
    """A base checkpoint opened for reading: our key -> shape/dtype, and a loader per key."""

    format: str
    path: Path
    args: ModelArgs
    files: list[str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    load: Callable[[str], torch.Tensor]
    origin: dict[str, tuple[str, str]]  # our key -> (file(s), source key)
    unexpected: dict[str, str] = field(default_factory=dict)  # source key -> why it is not converted
    reshaped: dict[str, str] = field(default_factory=dict)  # our key -> what was done to it
    special_tokens: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ Hugging Face


def open_hf_base(path: str | Path) -> BaseSource:
    """An HF Llama folder, tensors read one at a time (nothing is loaded here but the headers)."""
    path = Path(path)
    cfg, args = read_hf_config(path)
    readers = [SafetensorsReader(f) for f in hf_weight_files(path)]
    _check_index(path, readers)
    found: dict[str, tuple[SafetensorsReader, str]] = {}
    unexpected, reshaped = {}, {}
    for reader in readers:
        for hf_key in reader.entries:
            if is_rope_buffer(hf_key):
                unexpected[hf_key] = "RoPE buffer: recomputed from the config, not converted"
                continue
            try:
                ours = our_name(hf_key)
            except ValueError as e:
                raise ValueError(f"{reader.path}: {e}") from None
            if ours == "output.weight" and args.tie_embeddings:
                unexpected[hf_key] = "tied embeddings: lm_head is model.embed_tokens, not converted"
                continue
            if ours in found:
                raise ValueError(f"{hf_key!r} is in both {found[ours][0].path} and {reader.path}")
            found[ours] = (reader, hf_key)
            if ours.endswith(("attention.wq.weight", "attention.wk.weight")):
                reshaped[ours] = "rows permuted within each head: HF rotate-half -> interleaved RoPE pairs"

    def load(key: str) -> torch.Tensor:
        reader, hf_key = found[key]
        return from_hf_tensor(key, reader.read(hf_key), args)

    generation = path / "generation_config.json"
    defaults = json.loads(generation.read_text()) if generation.is_file() else {}
    return BaseSource(
        format="hf",
        path=path,
        args=args,
        files=[r.path.name for r in readers],
        shapes={k: r.shape(h) for k, (r, h) in found.items()},
        dtypes={k: r.dtype(h) for k, (r, h) in found.items()},
        load=load,
        origin={k: (r.path.name, h) for k, (r, h) in found.items()},
        unexpected=unexpected,
        reshaped=reshaped,
        special_tokens={name: cfg.get(name, defaults.get(name)) for name in ("bos_token_id", "eos_token_id")},
    )


def _check_index(path: Path, readers: list[SafetensorsReader]) -> None:
    """Every key the index lists is in the file it names (a stale index is an error, not a skip)."""
    if not (path / INDEX_FILE).is_file():
        return
    by_name = {r.path.name: r for r in readers}
    for key, name in json.loads((path / INDEX_FILE).read_text())["weight_map"].items():
        if key not in by_name[name].entries:
            raise ValueError(f"{path / INDEX_FILE} lists {key!r} in {name}, which does not contain it")


# -------------------------------------------------------------------------------------- Meta Llama

# How Meta's reference code splits each parameter over model-parallel ranks (None: replicated).
_META_LLAMA_SPLIT_DIM = {
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w2.weight": 1,
    "output.weight": 0,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
    "norm.weight": None,
}


class _MetaLlamaShards:
    """``consolidated.NN.pth`` files, memory-mapped, and re-opened after ~``budget_bytes`` were read.

    Every page a memory-mapped tensor touches stays resident until the file's mapping is released, so
    keeping the files open for the whole conversion would end up holding the model once more.
    """

    def __init__(self, files: list[Path], budget_bytes: int = 1 << 30):
        self.files = files
        self.budget_bytes = budget_bytes
        self._maps: list[dict[str, torch.Tensor]] | None = None
        self._read_bytes = 0

    def pieces(self, key: str) -> list[torch.Tensor]:
        if self._maps is None or self._read_bytes >= self.budget_bytes:
            self._maps = None  # release the old mappings before opening new ones
            self._maps = [_load_mmap(f) for f in self.files]
            self._read_bytes = 0
        pieces = [m[key] for m in self._maps]
        self._read_bytes += sum(p.nbytes for p in pieces)
        return pieces


def _load_mmap(path: Path) -> dict[str, torch.Tensor]:
    """A consolidated.NN.pth, memory-mapped (tensors are views of the file; nothing is read yet)."""
    try:
        state = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path} is not a readable torch.save file: {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _meta_llama_split_dim(key: str, shapes: list[tuple[int, ...]], args: ModelArgs) -> int | None:
    if len(shapes) == 1:
        return None
    if key == "tok_embeddings.weight":
        return 1 if shapes[0][1] * len(shapes) == args.dim else 0
    return _META_LLAMA_SPLIT_DIM[key.split(".", 2)[2] if key.startswith("layers.") else key]


def open_meta_llama_base(path: str | Path) -> BaseSource:
    """Meta's original format (possibly split over model-parallel files), memory-mapped, key by key."""
    path = Path(path)
    args = read_meta_llama_args(path)
    files = sorted(path.glob("consolidated.*.pth"))
    shards = _MetaLlamaShards(files)
    first = _load_mmap(files[0])
    layout: dict[str, list[tuple[int, ...]]] = {k: [tuple(v.shape)] for k, v in first.items()}
    dtypes = {k: v.dtype for k, v in first.items()}
    del first
    for f in files[1:]:
        other = _load_mmap(f)
        if set(other) != set(layout):
            diff = sorted(set(other) ^ set(layout))
            raise ValueError(f"{f} and {files[0]} hold different keys, e.g. {diff[:3]}")
        for k, v in other.items():
            layout[k].append(tuple(v.shape))
        del other
    if args.vocab_size <= 0 and "tok_embeddings.weight" in layout:  # Llama 2's params.json says -1
        emb = layout["tok_embeddings.weight"]
        vocab = emb[0][0] * (
            len(emb) if _meta_llama_split_dim("tok_embeddings.weight", emb, args) == 0 else 1
        )
        args = dataclasses.replace(args, vocab_size=vocab)

    split_dims: dict[str, int | None] = {}
    shapes_out, unexpected, reshaped = {}, {}, {}
    for key, shapes in layout.items():
        if key.endswith("freqs"):  # Llama 2 saved its RoPE table as rope.freqs
            unexpected[key] = "RoPE buffer: recomputed from params.json, not converted"
            continue
        try:
            hf_name(key)
        except ValueError as e:
            raise ValueError(f"{files[0]}: {e}") from None
        if key == "output.weight" and args.tie_embeddings:
            unexpected[key] = "tied embeddings: output is tok_embeddings, not converted"
            continue
        dim = split_dims[key] = _meta_llama_split_dim(key, shapes, args)
        full = list(shapes[0])
        if dim is not None:
            full[dim] = sum(s[dim] for s in shapes)
            reshaped[key] = (
                f"{len(shapes)} model-parallel shards {list(shapes[0])} concatenated along dim {dim}"
            )
        elif any(s != shapes[0] for s in shapes):
            raise ValueError(
                f"{key!r} should be replicated over {[f.name for f in files]} but has shapes {shapes}"
            )
        shapes_out[key] = tuple(full)

    def load(key: str) -> torch.Tensor:
        pieces = shards.pieces(key)
        if split_dims[key] is not None:
            return torch.cat(pieces, dim=split_dims[key])
        if any(not torch.equal(p, pieces[0]) for p in pieces[1:]):
            raise ValueError(
                f"{key!r} should be replicated over {[f.name for f in files]} but the files differ"
            )
        return pieces[0]

    return BaseSource(
        format="meta",
        path=path,
        args=args,
        files=[f.name for f in files],
        shapes=shapes_out,
        dtypes={k: dtypes[k] for k in shapes_out},
        load=load,
        origin={k: (", ".join(f.name for f in files), k) for k in shapes_out},
        unexpected=unexpected,
        reshaped=reshaped,
    )


def read_meta_llama_args(path: str | Path) -> ModelArgs:
    """ModelArgs from a Meta folder's params.json (vocab_size may be -1: Llama 2 leaves it to the data)."""
    path = Path(path)
    params = path / "params.json"
    if not params.is_file():
        raise FileNotFoundError(f"no params.json in Meta checkpoint folder {str(path)!r}")
    if not sorted(path.glob("consolidated.*.pth")):
        raise FileNotFoundError(f"no consolidated.*.pth in Meta checkpoint folder {str(path)!r}")
    try:
        return args_from_params_json(json.loads(params.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{params}: {e}") from None


def read_base_args(fmt: str, path: str | Path) -> ModelArgs:
    """The architecture of a base from its small config file only (cheap enough for parse time)."""
    if fmt == "hf":
        return read_hf_config(path)[1]
    if fmt == "meta":
        return read_meta_llama_args(path)
    raise ValueError(f"base format {fmt!r} is not valid; choose one of {list(FORMATS)}")


OPENERS: dict[str, Callable[[Path], BaseSource]] = {"hf": open_hf_base, "meta": open_meta_llama_base}


# ----------------------------------------------------------------------------------- writing DCP


class _LazySavePlanner(DefaultSavePlanner):
    """Plans from meta-device placeholders; each tensor is loaded when the writer asks for it."""

    def __init__(self, load: Callable[[str], torch.Tensor], placeholders: dict[str, torch.Tensor]):
        super().__init__()
        self.load = load
        self.placeholders = placeholders  # our key -> meta tensor

    def resolve_data(self, write_item: WriteItem) -> Any:
        if write_item.type == WriteItemType.BYTE_IO:
            return super().resolve_data(write_item)
        key = write_item.index.fqn.removeprefix(MODEL_PREFIX)
        tensor, expected = self.load(key), self.placeholders[key]
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            raise ValueError(
                f"{key}: loaded {tensor.dtype} {list(tensor.shape)}, planned {expected.dtype} "
                f"{list(expected.shape)}"
            )
        return tensor


def _check_source(source: BaseSource, vocab: str) -> dict[str, str]:
    """Keys and shapes against the model ``source.args`` describes; returns the reasons of the keys the
    DCP will not hold (``vocab: drop``), whose source tensors are then listed as unexpected."""
    expected = model_shapes(source.args)
    missing = {}
    for key, shape in expected.items():
        if key not in source.shapes:
            name = hf_name(key) if source.format == "hf" else key
            raise ValueError(f"{source.path}: checkpoint is missing {name!r}")
        if source.shapes[key] != shape:
            files, name = source.origin[key]
            raise ValueError(
                f"{source.path}: {name} ({files}) has shape {list(source.shapes[key])}, but the config says "
                f"{list(shape)}"
            )
    extra = sorted(set(source.shapes) - set(expected))
    if extra:
        raise ValueError(f"{source.path}: tensors beyond the configured model: {extra[:5]}")
    if vocab == "drop":
        for key in VOCAB_KEYS:
            if key in expected:
                missing[key] = "vocab: drop; step 0 initialises it from the run's seed"
                source.unexpected[source.origin[key][1]] = "vocab: drop; not converted"
    return missing


def convert_to_dcp(fmt: str, source_path: str | Path, out_dir: str | Path, *, vocab: str = "keep") -> dict:
    """Convert a base checkpoint into a DCP folder (model only) + meta.json + conversion.json, atomically.

    Everything is checked (names, shapes, files) before the first byte is written; the folder is built
    as a hidden ``.partial`` sibling and renamed into place at the end. Returns conversion.json's dict.
    """
    if vocab not in VOCAB_POLICIES:
        raise ValueError(f"vocab policy {vocab!r} is not valid; choose one of {list(VOCAB_POLICIES)}")
    source_path, out_dir = Path(source_path), Path(out_dir)
    if not source_path.is_dir():
        raise FileNotFoundError(f"base checkpoint folder {str(source_path)!r} does not exist")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite it")
    if fmt not in OPENERS:
        raise ValueError(f"base format {fmt!r} is not valid; choose one of {list(OPENERS)}")
    source = OPENERS[fmt](source_path)
    missing = _check_source(source, vocab)
    keys = [k for k in model_shapes(source.args) if k not in missing]
    record = {
        "base": {"format": fmt, "path": str(source_path), "files": source.files},
        "vocab": vocab,
        "model_args": params_json(source.args),
        "tensors": len(keys),
        "parameters": sum(torch.Size(source.shapes[k]).numel() for k in keys),
        "dtypes": sorted({str(source.dtypes[k]).removeprefix("torch.") for k in keys}),
        "missing": missing,
        "unexpected": source.unexpected,
        "reshaped": {k: v for k, v in source.reshaped.items() if k in keys},
        "origin": {k: {"file": source.origin[k][0], "key": source.origin[k][1]} for k in keys},
    }

    with atomic_folder(out_dir) as tmp:
        placeholders = {k: torch.empty(source.shapes[k], dtype=source.dtypes[k], device="meta") for k in keys}
        writer = FileSystemWriter(str(tmp), single_file_per_rank=False, thread_count=1)
        try:
            dcp.save(
                {"model": placeholders},
                storage_writer=writer,
                planner=_LazySavePlanner(source.load, placeholders),
            )
        except CheckpointException as e:  # DCP wraps what a loader raised; show the user the original
            raise next(iter(e.failures.values()))[0] from None
        write_json(tmp / CONVERSION, record)
        info = {
            "kind": "base",
            "model_args": params_json(source.args),
            "contents": ["model"],
            "checkpoint_id": uuid.uuid4().hex,
            "vocab": vocab,
            **source.special_tokens,
            "checksums": checksums.MANIFEST,
            "provenance": provenance(),
        }
        write_json(tmp / CHECKPOINT_INFO, info)  # marks the folder complete
        checksums.write_manifest(tmp, {})  # last: every file's size and sha256
    return record
