"""Training datasets over the chunked layout (Ego4D narrations, EK-100 MIR and CLS, Kinetics lists)
and the data loader factory. Items hold uint8 (T, S, S, 3) clips and raw strings: normalisation runs
on the GPU (``avtool.video.augment``) and tokenisation in the training code."""

from avtool.data.base import ClipConfig, ClipDataset
from avtool.data.ego4d import Ego4DConfig, Ego4DNarrations
from avtool.data.ek100 import EK100CLS, EK100MIR, EK100CLSConfig, EK100Layout, EK100MIRConfig, parse_timestamp
from avtool.data.kinetics import KineticsConfig, KineticsList
from avtool.data.loader import EpochSampler, LoaderConfig, make_loader, set_epoch

__all__ = [
    "ClipConfig", "ClipDataset", "EK100CLS", "EK100CLSConfig", "EK100Layout", "EK100MIR", "EK100MIRConfig",
    "Ego4DConfig", "Ego4DNarrations", "EpochSampler", "KineticsConfig", "KineticsList", "LoaderConfig", "make_loader",
    "parse_timestamp", "set_epoch",
]  # fmt: skip
