"""The renderer of TorchScript model folders: a :class:`cmrstudio.api.GeneratorFront`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cmrstudio.api import CmrError, GeneratorFront, verify


class TorchScriptRenderer(GeneratorFront):
    """Heart-centred crop, fully synthetic, one network pass (offered for the live path)."""

    kinds = ("torchscript",)
    one_step = True

    def load_network(self):
        verify(self.info)  # sha256 of model.pt against the card, before the file is loaded
        try:
            net = torch.jit.load(str(self.info.weights_path), map_location=self.device)
        except Exception as exc:
            raise CmrError(f"{self.info.weights_path} is not a TorchScript model torch can load ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); export it with torch.jit.trace(...).save().") from None
        opts = self.info.card["architecture"]["options"]
        self.latent_dim, self.output_range, n = int(opts["latent_dim"]), list(opts["output_range"]), int(opts["n_labels"])
        self.n_labels = n  # (also set by the base class from the card's labels)
        return net.eval()

    def latent(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(1, self.latent_dim, generator=g)

    @torch.inference_mode()
    def _generate(self, framed: np.ndarray, vendor_index: int, seed) -> np.ndarray:
        oh = F.one_hot(torch.from_numpy(framed.astype(np.int64)), self.n_labels).permute(0, 3, 1, 2).float().to(self.device)
        args = [oh]
        if self.latent_dim:
            z = self.latent(seed).expand(len(framed), -1) if np.isscalar(seed) else torch.cat([self.latent(s) for s in seed])
            args.append(z.to(self.device))
        with self._lock:
            out = self.net(*args)
        if not isinstance(out, torch.Tensor):
            raise CmrError(f"The TorchScript model '{self.name}' returned a {type(out).__name__}, not an image tensor.")
        if out.ndim == 4 and out.shape[1] == 1:
            out = out[:, 0]
        img = out.float().cpu().numpy()
        if self.output_range == [-1, 1]:
            img = (img + 1.0) / 2.0
        return img.clip(0, 1).astype(np.float32) if img.dtype.kind == "f" else img
