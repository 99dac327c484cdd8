"""The VAE renderer: a :class:`cmrstudio.api.GeneratorFront` for cards of kind ``vae``."""

from __future__ import annotations

import numpy as np
import torch

from cmrstudio.api import CmrError, GeneratorFront, load_state, verify
from cmrstudio_vae.net import CondVAE, VAEConfig, onehot


class VAERenderer(GeneratorFront):
    """Heart-centred crop, fully synthetic; the seed draws the style latent from N(0, I). One pass: live-capable."""

    kinds = ("vae",)
    one_step = True

    def load_network(self):
        verify(self.info)  # the weights' sha256 against the card, before anything is read
        try:
            cfg = VAEConfig.from_dict(self.info.card.get("architecture", {}).get("options", {}))
        except (TypeError, ValueError) as exc:
            raise CmrError(f"The card {self.info.card_path} describes a VAE this plugin cannot build ({exc}).") from None
        net = CondVAE(cfg)
        try:
            net.load_state_dict(load_state(self.info.weights_path), strict=True)
        except RuntimeError as exc:
            raise CmrError(f"The weights {self.info.weights_path} do not fit the VAE in their card ({str(exc).splitlines()[0]}).") from None
        return net.to(self.device).eval()

    def latent(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(1, self.net.cfg.z_dim, generator=g)

    @torch.inference_mode()
    def _generate(self, framed: np.ndarray, vendor_index: int, seed) -> np.ndarray:
        oh = onehot(torch.from_numpy(framed.astype(np.int64)), self.n_labels).to(self.device)
        if np.isscalar(seed):
            z = self.latent(seed).expand(len(framed), -1)
        else:
            z = torch.cat([self.latent(s) for s in seed])
        with self._lock:
            out = self.net(oh, z.to(self.device))
        return ((out[:, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0, 1).astype(np.float32)
