"""Merging LoRAs into a loaded pipeline's weights, and undoing them exactly.

The merge works on the models' parameter trees, not on module classes, so it holds for plain mlx.nn
layers and for the CPU's substitutes alike: each changed weight becomes

    stored = (base.astype(float32) + sum of user_weight * delta).astype(base.dtype)

computed in float32 whatever the storage dtype, and written back in the base's dtype (`Merging`; the CPU
path computes the same in one pass, mlx_sd.cpu.lora_merge). The bases of the
touched weights (only those) are kept, so undoing restores them bit for bit; switching LoRAs recomputes
from the bases. A weight of 0 touches nothing, so it is bit-identical to no LoRA.

Hook: after a weight changes, every module owning a changed parameter that has a `weights_changed()`
method is called, so substitutes that cache something derived from their weights (a transformed
Winograd filter, a packed GEMM operand) drop it.

Everything is resolved and checked before the first write: a LoRA that fails leaves the models exactly
as they were. Only the evaluation comes after the previous set is undone (its memory is reused); if it
fails (out of memory) the models are left with no LoRA, and the error says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from .deltas import LayerDelta, dora, weight_delta
from .errors import LoraError
from .half import narrow
from .lora_file import FAMILY_LABELS, LoraFile
from .names import LayerIndex

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
Key = tuple[str, str]  # (component, parameter path)
GROUP_BYTES = 64 * 2**20  # merged weights evaluated together


@dataclass(frozen=True)
class LoraUse:
    """A LoRA with its user weights: A1111's `<lora:NAME:TE_W:UNET_W>` (`<lora:NAME:W>`: both W)."""

    lora: LoraFile
    text_encoder_weight: float = 1.0
    unet_weight: float = 1.0

    def weight_for(self, component: str) -> float:
        return self.text_encoder_weight if component in TEXT_ENCODERS else self.unet_weight


@dataclass
class MergeReport:
    """What a merge did: layers changed, and per LoRA the keys that matched no layer (as A1111 warns)."""

    changed: int = 0
    unmatched: dict[str, tuple[int, str]] = field(default_factory=dict)  # LoRA name -> (count, an example)

    def warnings(self) -> list[str]:
        return [f"{name}: {count} keys match no layer of this model (e.g. {example})"
                for name, (count, example) in self.unmatched.items()]  # fmt: skip


def _fit(delta: LayerDelta, shape: tuple[int, ...], module: str) -> LayerDelta:
    """A delta for a parameter of `shape`: a 1x1 conv's delta fits a linear layer and the other way round."""
    if delta.shape == shape:
        return delta
    if math.prod(delta.shape) != math.prod(shape):
        torch_shape = (shape[0], shape[-1], *shape[1:-1]) if len(shape) == 4 else shape
        found = (delta.shape[0], delta.shape[-1], *delta.shape[1:-1]) if len(delta.shape) == 4 else delta.shape
        raise LoraError(f"{module} changes a layer of shape {list(torch_shape)} by one of shape {list(found)}")
    return delta.reshaped(shape)


class Merging:
    """How a merged weight is computed: (base in float32 + delta) in the base's dtype, as mlx ops,
    float16 through the vectorised cast (mlx's is scalar on the CPU)."""

    def merged(self, base: mx.array, delta: LayerDelta) -> mx.array:
        total = base.astype(mx.float32) + delta.materialized()
        return narrow(total) if base.dtype == mx.float16 else total.astype(base.dtype)


def _evaluate_in_groups(arrays: Sequence[mx.array]) -> None:
    """Evaluate `arrays` about GROUP_BYTES at a time: fewer waits than one eval per layer (336 in SD1.5),
    while one eval of all would hold every layer's float32 temporaries at once (a second copy of the UNet)."""
    group: list[mx.array] = []
    size = 0
    for array in arrays:
        group.append(array)
        size += array.nbytes
        if size >= GROUP_BYTES:
            mx.eval(group)
            group, size = [], 0
    mx.eval(group)


def _owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *route, leaf = path.split(".")
    owner = model
    for step in route:
        owner = owner[int(step)] if isinstance(owner, list) else owner[step]
    return owner, leaf


class LoraMerger:
    """The LoRAs merged into one pipeline's models (by component name: unet, text_encoder, text_encoder_2)."""

    def __init__(self, models: Mapping[str, nn.Module], family: str, layers_per_block: int,
                 merging: Merging | None = None):
        self.models = dict(models)
        self.merging = merging or Merging()
        self.family = family
        self.index = LayerIndex(self.models, layers_per_block)
        self._bases: dict[Key, mx.array] = {}  # the original of every weight we have changed

    def _current(self, key: Key) -> mx.array:
        owner, leaf = _owner(self.models[key[0]], key[1])
        return owner[leaf]

    def _base(self, key: Key) -> mx.array:
        return self._bases[key] if key in self._bases else self._current(key)

    def _check_family(self, lora: LoraFile) -> None:
        families = lora.families()
        if families and self.family not in families:
            made_for = " or ".join(FAMILY_LABELS[f] for f in sorted(families))
            raise LoraError(f"{lora.name} is a LoRA for {made_for}; the loaded model is {FAMILY_LABELS[self.family]}")

    def _deltas(self, uses: Sequence[LoraUse], report: MergeReport, components: set[str]) -> dict[Key, LayerDelta]:
        """Sum of user_weight * delta per parameter of `components`, in float32 and our layout; raises
        before any write."""
        sums: dict[Key, LayerDelta] = {}
        for use in uses:
            self._check_family(use.lora)
            unmatched = list(use.lora.unknown_keys)
            matched = 0
            for module, parts in use.lora.modules.items():
                resolved = self.index.resolve(module)
                if resolved is None:
                    unmatched.append(module)
                    continue
                matched += 1
                component, path = resolved
                weight = use.weight_for(component)
                if weight == 0 or component not in components:
                    continue
                for leaf, delta in self._module_deltas(module, component, path, parts, weight):
                    key = (component, f"{path}.{leaf}")
                    sums[key] = sums[key] + delta if key in sums else delta
            if matched == 0 and unmatched:  # no layers at all: a file of bundled embeddings only
                raise LoraError(f"{use.lora.name} matches no layer of this model (e.g. {unmatched[0]})")
            if unmatched:
                report.unmatched[use.lora.name] = (len(unmatched), unmatched[0])
        return sums

    def _module_deltas(self, module: str, component: str, path: str, parts: Mapping[str, mx.array], weight: float):
        """(parameter leaf, weight * its delta) of one layer, in float32 and our layout."""
        base = self._base((component, f"{path}.weight"))
        dora_scale = parts.get("dora_scale")
        # DoRA renormalises the whole merged weight: the user's weight scales its result (A1111)
        delta = weight_delta(module, parts, 1.0 if dora_scale is not None else weight)
        if delta is not None:
            delta = _fit(delta, base.shape, module)
            if dora_scale is not None:
                delta = LayerDelta(base.shape, weight * dora(delta.materialized(), base.astype(mx.float32), dora_scale))
            yield "weight", delta
        if "diff_b" in parts:
            owner, _ = _owner(self.models[component], f"{path}.weight")
            if "bias" not in owner or owner["bias"].shape != parts["diff_b"].shape:
                raise LoraError(f"{module} changes a bias this layer does not have, or of another shape")
            yield "bias", LayerDelta(owner["bias"].shape, weight * parts["diff_b"].astype(mx.float32))

    def apply(self, uses: Sequence[LoraUse], components: Sequence[str] | None = None) -> MergeReport:
        """Make `uses` the merged set (replacing the previous one); an empty list removes every LoRA.
        With `components`, only those models change (the others keep what is merged into them)."""
        report = MergeReport()
        scope = set(self.models if components is None else components)
        sums = self._deltas(uses, report, scope)  # every check: a LoRA that fails here changes nothing
        merged = {key: self.merging.merged(self._base(key), delta) for key, delta in sums.items()}
        del sums  # a delta still referenced here would keep its float32 result after evaluation: all at once
        # the previous set goes first: its merged weights are freed and the new ones take their memory
        # (a switch faults in no new pages, and the peak is the bases plus one merged set, not two)
        restored = [key for key in self._bases if key[0] in scope]
        self._write({key: self._bases[key] for key in restored})
        try:
            # largest first, so that each layer's float32 temporaries fit in the heap's holes left by
            # bigger ones instead of growing it (page faults)
            _evaluate_in_groups(sorted(merged.values(), key=lambda array: array.nbytes, reverse=True))
        except (RuntimeError, MemoryError, ValueError) as error:  # out of memory, in practice
            for key in restored:
                del self._bases[key]
            cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            where = "" if components is None else f" to the {' and '.join(sorted(scope))}"
            raise LoraError(f"merging the LoRAs failed ({cause}); no LoRA is applied{where} now") from error
        for key in merged:
            self._bases.setdefault(key, self._current(key))
        self._write(merged)
        for key in restored:
            if key not in merged:
                del self._bases[key]
        report.changed = len(merged)
        return report

    def any_merged(self) -> bool:
        return bool(self._bases)

    def replace_model(self, component: str, model: nn.Module) -> None:
        """`component` was loaded afresh (its original weights): forget what was merged into the old one."""
        self.models[component] = model
        self._bases = {key: base for key, base in self._bases.items() if key[0] != component}

    def remove_all(self) -> None:
        self.apply([])

    def _write(self, writes: Mapping[Key, mx.array]) -> None:
        owners: dict[int, nn.Module] = {}
        for (component, path), array in writes.items():
            owner, leaf = _owner(self.models[component], path)
            owner[leaf] = array
            owners[id(owner)] = owner
        for owner in owners.values():
            changed = getattr(owner, "weights_changed", None)
            if callable(changed):
                changed()
