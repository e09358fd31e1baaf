"""VideoMAE: a masked autoencoder over video cubes (Tong et al. 2022; AVION §5.5), and VideoMAE V2's
decoder masking (Wang et al. 2023).

A clip (B, 3, T, H, W) is cut into 2 × 16 × 16 cubes (tubelets), embedded, and given a fixed sine-cosine
position table. The encoder sees only the visible cubes (10% with the tube mask of ratio 0.9); the
decoder sees the encoded visible tokens followed by one learned mask token per position it is asked to
reconstruct, each with its own (decoder-width) position, and predicts the cube's normalised pixels there.
With V2's running-cell decoder mask it reconstructs only half of the positions of each frame. The loss is
the mean squared error over the positions that were masked for the encoder and decoded.

Masks are boolean (B, L) tensors over the frame-major cube grid, True = masked (hidden from the encoder,
or not decoded), made on the model's device per batch (``tube_mask``, ``running_cell_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avtool.models.attention import AttnImpl
from avtool.models.blocks import Block, Transformer
from avtool.models.patch_embed import PatchEmbed

NORM_EPS = 1e-6
"""LayerNorm epsilon of VideoMAE's encoder and decoder."""


@dataclass(frozen=True)
class VideoMAEConfig:
    """Shapes of the encoder and decoder; ``VIDEOMAE_SIZES`` has ViT-S/B/L as the reference repositories."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    mlp_ratio: float = 4.0
    num_frames: int = 16
    image_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    attn: AttnImpl = "sdpa"
    """Attention kernel of the encoder and the decoder (AVION: memory-efficient in both)."""
    drop_path: float = 0.0
    fast_patch_embed: bool = True
    """The patch embedding as one matmul on unfolded cubes (same maths as the Conv3d)."""

    def __post_init__(self) -> None:
        if self.num_frames % self.tubelet_size or self.image_size % self.patch_size:
            raise ValueError(
                f"{self.num_frames} frames of {self.image_size}² do not split into {self.tubelet_size}×"
                f"{self.patch_size}×{self.patch_size} cubes"
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Cubes along (time, height, width)."""
        side = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def cube_values(self) -> int:
        """Pixels of one cube over its 3 colour channels: the prediction per token."""
        return 3 * self.tubelet_size * self.patch_size**2


VIDEOMAE_SIZES: dict[str, VideoMAEConfig] = {
    "small": VideoMAEConfig(width=384, depth=12, heads=6, decoder_width=192, decoder_heads=3),
    "base": VideoMAEConfig(),
    "large": VideoMAEConfig(width=1024, depth=24, heads=16, decoder_width=512, decoder_heads=8),
    "tiny": VideoMAEConfig(width=64, depth=2, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2,
                           num_frames=4, image_size=32, patch_size=8),
}  # fmt: skip
"""small, base, large: VideoMAE's ViT-S/B/L with their 4-block decoders; tiny: seconds on a CPU (tests)."""


def sincos_table(positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed position table (positions, dim): position i, channel j gets
    sin (j even) or cos (j odd) of i / 10000^(2⌊j/2⌋ / dim), over the flattened cube index."""
    index = torch.arange(positions, dtype=torch.float64)[:, None]
    channel = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = index / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    table = torch.where(channel.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def tube_mask(
    batch: int, grid: tuple[int, int, int], ratio: float, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """(batch, t·h·w) bool, True = hidden from the encoder: per clip int(ratio·h·w) spatial positions drawn
    uniformly, the same at every time step (a tube), so every clip has the same number visible."""
    t, h, w = grid
    masked = int(ratio * h * w)
    if not 0 <= masked < h * w:
        raise ValueError(f"mask ratio {ratio} leaves no visible cube of the {h}×{w} grid")
    order = torch.rand(batch, h * w, device=device, generator=generator).argsort(dim=1)
    spatial = torch.zeros(batch, h * w, dtype=torch.bool, device=device)
    spatial.scatter_(1, order[:, :masked], True)
    return spatial.repeat(1, t)


def running_cell_mask(
    batch: int, grid: tuple[int, int, int], device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # fmt: skip
    """(batch, t·h·w) bool, True = not decoded: VideoMAE V2's running cell of ratio 0.5. Each 2×2 spatial
    cell (row-major) holds the pattern [1, 1, 0, 0] shifted by one place per time step from a random start per
    clip, tiled over the grid: every frame decodes half of its positions, each position two frames in four."""
    t, h, w = grid
    if h % 2 or w % 2:
        raise ValueError(f"the running cell needs an even spatial grid, got {h}×{w}")
    pattern = torch.tensor([True, True, False, False], device=device)
    start = torch.randint(0, 4, (batch, 1, 1), device=device, generator=generator)
    cell = (torch.arange(4, device=device)[None, None, :] - start - torch.arange(t, device=device)[None, :, None]) % 4
    cells = pattern[cell].reshape(batch, t, 2, 2)  # (batch, t, cell row, cell column)
    tiled = cells[:, :, None, :, None, :].expand(batch, t, h // 2, 2, w // 2, 2)
    return tiled.reshape(batch, t * h * w)


def cube_targets(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, L, 3·tubelet·patch²) reconstruction targets of a (B, 3, T, H, W) clip: each cube's pixels,
    per colour channel normalised over the cube ((x − mean) / (unbiased std + 1e-6)), channel fastest."""
    B, C, T, H, W = video.shape
    x = video.float().reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, (T // tubelet) * (H // patch) * (W // patch), -1, C)
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.flatten(2)


@dataclass(frozen=True)
class Reconstruction:
    """What the decoder predicted and where: ``pred[b, i]`` is the cube at ``positions[b, i]``."""

    pred: torch.Tensor
    """(B, N, cube values): the predictions of the decoded positions."""
    positions: torch.Tensor
    """(B, N) long: their cube indices in the frame-major grid."""
    counts: torch.Tensor
    """(B, N) bool: the positions the loss counts (hidden from the encoder and decoded)."""


def encoder_blocks(c: VideoMAEConfig) -> Transformer:
    """The encoder's blocks, with stochastic depth rising linearly to ``c.drop_path`` in the last."""
    rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
    return Transformer([
        Block(c.width, c.heads, c.mlp_ratio, attn_impl=c.attn, drop_path=rate, norm_eps=NORM_EPS) for rate in rates
    ])  # fmt: skip


class VideoMAE(nn.Module):
    """Encoder and decoder of VideoMAE; ``forward(video, mask, decode_mask)`` returns a ``Reconstruction``."""

    def __init__(self, config: VideoMAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.width, c.patch_size, c.tubelet_size, fast=c.fast_patch_embed, bias=True)
        self.register_buffer("pos_embed", sincos_table(c.num_tokens, c.width), persistent=False)
        self.encoder = encoder_blocks(c)
        self.encoder_norm = nn.LayerNorm(c.width, eps=NORM_EPS)
        self.encoder_to_decoder = nn.Linear(c.width, c.decoder_width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width))
        self.register_buffer("decoder_pos_embed", sincos_table(c.num_tokens, c.decoder_width), persistent=False)
        self.decoder = Transformer([
            Block(c.decoder_width, c.decoder_heads, c.mlp_ratio, attn_impl=c.attn, norm_eps=NORM_EPS)
            for _ in range(c.decoder_depth)
        ])  # fmt: skip
        self.decoder_norm = nn.LayerNorm(c.decoder_width, eps=NORM_EPS)
        self.head = nn.Linear(c.decoder_width, c.cube_values)
        self._init_weights()

    def _init_weights(self) -> None:
        # As VideoMAE: Xavier-uniform linear layers with zero biases, unit LayerNorms, a small-normal mask token.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> tuple[str, ...]:
        """Parameters AdamW leaves undecayed besides biases and norms (as VideoMAE)."""
        return ("mask_token",)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    def encode(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, visible, width): the encoder's output for the visible cubes, in grid order."""
        return self._encode(video, _positions(~mask))

    def _encode(self, video: torch.Tensor, visible_at: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video) + self.pos_embed.to(video.dtype)
        visible = x.gather(1, visible_at[..., None].expand(-1, -1, x.shape[-1]))
        return self.encoder_norm(self.encoder(visible))

    def forward(
        self, video: torch.Tensor, mask: torch.Tensor, decode_mask: torch.Tensor | None = None
    ) -> Reconstruction:
        """``video`` (B, 3, T, H, W), normalised; ``mask`` (B, L) True = hidden from the encoder;
        ``decode_mask`` (B, L) True = not decoded (None: decode every hidden position, VideoMAE V1)."""
        visible_at = _positions(~mask)
        decoded_at = _positions(mask if decode_mask is None else ~decode_mask)
        encoded = self.encoder_to_decoder(self._encode(video, visible_at))
        pos = self.decoder_pos_embed.to(encoded.dtype)
        tokens = torch.cat([encoded + pos[visible_at], self.mask_token.to(encoded.dtype) + pos[decoded_at]], dim=1)
        out = self.decoder(tokens)[:, visible_at.shape[1] :]
        return Reconstruction(self.head(self.decoder_norm(out)), decoded_at, mask.gather(1, decoded_at))


def _positions(selected: torch.Tensor) -> torch.Tensor:
    """(B, N) grid indices of the True entries of ``selected`` (B, L), in grid order; every row selects the same
    number (the masks have fixed counts)."""
    B, L = selected.shape
    return torch.arange(L, device=selected.device).expand(B, L)[selected].reshape(B, -1)


def reconstruction_loss(reconstruction: Reconstruction, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the counted positions of ``reconstruction`` against ``targets`` (B, L, values)."""
    r = reconstruction
    index = r.positions[..., None].expand(-1, -1, targets.shape[-1])
    error = (r.pred.float() - targets.gather(1, index)).pow(2).mean(dim=-1)
    counted = r.counts.float()
    return (error * counted).sum() / counted.sum().clamp_min(1.0)


ENCODER_PREFIXES = ("patch_embed.", "encoder.")
"""What fine-tuning takes from a pretraining checkpoint: the cube embedding and the encoder's blocks."""


class VideoMAEClassifier(nn.Module):
    """VideoMAE's fine-tuning model: the encoder over every cube, mean-pooled, a final LayerNorm and a linear
    head (initialised small, ×``head_init_scale``); ``forward(video)`` gives (B, num_classes) logits."""

    def __init__(self, config: VideoMAEConfig, num_classes: int, head_init_scale: float = 1e-3) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.width, c.patch_size, c.tubelet_size, fast=c.fast_patch_embed, bias=True)
        self.register_buffer("pos_embed", sincos_table(c.num_tokens, c.width), persistent=False)
        self.encoder = encoder_blocks(c)
        self.fc_norm = nn.LayerNorm(c.width, eps=NORM_EPS)
        self.head = nn.Linear(c.width, num_classes)
        # As VideoMAE's fine-tuning model: truncated-normal linear layers, then the head scaled down so that the
        # first logits are near zero and the pretrained features are not disturbed by large early gradients.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
            self.head.bias.mul_(head_init_scale)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, width): the normed mean of the encoder's tokens for a normalised (B, 3, T, H, W) clip."""
        x = self.patch_embed(video) + self.pos_embed.to(video.dtype)
        return self.fc_norm(self.encoder(x).mean(dim=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(video))

    def load_encoder(self, pretrained: dict[str, torch.Tensor]) -> int:
        """Copy the cube embedding and encoder of a VideoMAE pretraining state dict; returns the tensors copied.
        Raises ValueError naming what is missing or shaped differently (another model size or clip shape)."""
        own = self.state_dict()
        wanted = [name for name in own if name.startswith(ENCODER_PREFIXES)]
        missing = [name for name in wanted if name not in pretrained]
        mismatched = [n for n in wanted if n in pretrained and tuple(pretrained[n].shape) != tuple(own[n].shape)]
        if missing or mismatched:
            detail = (f"missing {', '.join(missing[:3])}" if missing else "") + (
                f"{'; ' if missing else ''}shaped differently: {', '.join(mismatched[:3])}" if mismatched else ""
            )
            raise ValueError(f"not this model's encoder ({detail})")
        self.load_state_dict({name: pretrained[name] for name in wanted}, strict=False)
        return len(wanted)
