"""Framework-neutral pieces shared by the twins: the model configuration and its presets."""

from r34.config import BLOCK_EXPANSION, PRESETS, BlockSpec, ResNetConfig, get_preset, preset_name

__all__ = ["BLOCK_EXPANSION", "BlockSpec", "PRESETS", "ResNetConfig", "get_preset", "preset_name"]
