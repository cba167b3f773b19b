"""LoRA, LoCon, LyCORIS (LoHa, LoKr, full) and PEFT files, merged into a loaded pipeline's weights.

    read_lora(path, allow_pickle=False) -> LoraFile        (mlx_sd.lora.lora_file)
    LoraMerger(models, family, layers_per_block).apply([LoraUse(lora, te_weight, unet_weight), ...])
    parse_lora_tags(prompt) -> (prompt without tags, [LoraRequest])   (mlx_sd.lora.prompt_tags)

Every failure is a LoraError with a one-line message.
"""

from .errors import LoraError
from .lora_file import LoraFile, read_lora
from .merge import LoraMerger, LoraUse, MergeReport
from .prompt_tags import parse_lora_tags

__all__ = ["LoraError", "LoraFile", "LoraMerger", "LoraUse", "MergeReport", "parse_lora_tags", "read_lora"]
