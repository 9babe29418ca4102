"""A convolutional patch embedding for timm's VisionTransformer (``embed_layer=ConvStemEmbed``)."""

from __future__ import annotations

import torch


class ConvStemEmbed(torch.nn.Module):
    """Patch embedding by a small convolutional stem instead of one strided projection.

    Xiao et al., "Early Convolutions Help Transformers See Better" (NeurIPS 2021): replacing the
    ViT's single ``patch x patch`` stride-``patch`` convolution with a stack of small
    convolutions (BatchNorm + ReLU) and a final 1x1 projection makes optimisation markedly
    faster and steadier. Here that matters: a plain ViT trained from scratch on the shapes data
    sits at chance for hundreds of steps, because no colour or texture statistic predicts the
    label and a linear patch projection cannot express "an edge between any two colours".

    One token per ``patch x patch`` pixel block, row-major, exactly like timm's ``PatchEmbed``
    (same ``img_size``, ``patch_size``, ``grid_size``, ``num_patches`` attributes), so the token
    layout, and the attention maps, mean the same thing.

    Each factor of 2 is a 2x2 stride-2 convolution (non-overlapping, so the blocks tile the
    image exactly as patches do) followed by a 3x3 stride-1 convolution with padding 1 (context,
    centred). Token ``(r, c)``'s receptive field is therefore centred on its block's centre
    ``(patch * r + (patch - 1) / 2, patch * c + (patch - 1) / 2)``, where maps are drawn. (3x3
    stride-2 convolutions with padding 1 would centre it on the block's top-left pixel, half a
    patch off.) At patch 8 the receptive field spans 36 px.

    Args:
        img_size: input side (int) in pixels.
        patch_size: effective patch side, a power of two >= 2 (one stride-2 conv per factor 2).
        in_chans: input channels.
        embed_dim: token width.
        **_: timm's other embedding kwargs (``bias``, ``dynamic_img_pad``, ``device``, ...),
            accepted for signature compatibility and ignored.
    """

    def __init__(self, img_size: int = 96, patch_size: int = 8, in_chans: int = 3,
                 embed_dim: int = 96, **_) -> None:
        super().__init__()
        img = int(img_size if isinstance(img_size, int) else img_size[0])
        patch = int(patch_size if isinstance(patch_size, int) else patch_size[0])
        n_convs = patch.bit_length() - 1
        if patch < 2 or 1 << n_convs != patch or img % patch:
            raise ValueError(f"conv stem needs a power-of-two patch_size dividing img_size; "
                             f"got patch_size {patch}, img_size {img}")
        self.img_size = (img, img)
        self.patch_size = (patch, patch)
        self.grid_size = (img // patch, img // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = True
        layers: list[torch.nn.Module] = []
        chans = in_chans
        for i in range(n_convs):
            out = min(128, 32 * 2 ** i)
            for kernel, stride, pad in ((2, 2, 0), (3, 1, 1)):
                layers += [torch.nn.Conv2d(chans, out, kernel, stride, pad, bias=False),
                           torch.nn.BatchNorm2d(out), torch.nn.ReLU(inplace=True)]
                chans = out
        layers.append(torch.nn.Conv2d(chans, embed_dim, 1))
        self.stem = torch.nn.Sequential(*layers)

    def feat_ratio(self, as_scalar: bool = True):
        """Pixels per token along each side (timm's ``PatchEmbed`` API)."""
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 -> (B, gh * gw, embed_dim) float32 tokens, row-major."""
        return self.stem(x).flatten(2).transpose(1, 2)

