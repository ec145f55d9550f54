"""Is an image unlike the training data? A density of the training images' backbone features.

The pooled backbone features of the training images are projected on their leading principal
components and modelled as a Gaussian with Ledoit-Wolf shrinkage covariance; what the components
leave out is modelled as isotropic noise of the training images' residual variance. An image's score
is its Mahalanobis distance under that model, so a shift along any direction counts. The flag
threshold is a high quantile (default 95%, `--ood-quantile`) of the validation images' scores, so
about 5% of images like the validation data are flagged. A flag says "unlike what the model was
trained on; its output here is not supported by the validation figures", not "wrong".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METHOD = "Mahalanobis distance of pooled backbone features (PCA, Ledoit-Wolf covariance) to the training images"


@dataclass
class FeatureDensity:
    mean: np.ndarray  # (D,) mean training feature
    components: np.ndarray  # (k, D) leading principal directions of the training features
    precision: np.ndarray  # (k, k) inverse shrinkage covariance in that subspace
    residual_var: float  # per-dimension variance of the training features outside the subspace
    threshold: float  # scores above it are flagged
    quantile: float  # of the validation scores, that set the threshold

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray, quantile: float = 0.95, max_components: int = 64) -> "FeatureDensity":
        from sklearn.covariance import LedoitWolf

        train = np.asarray(train, dtype=np.float64)
        mean = train.mean(0)
        # at most half as many components as images, so that the residual is estimated on the training images too
        k = max(1, min(max_components, (train.shape[0] - 1) // 2, train.shape[1] - 1))
        _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
        components = vt[:k]
        z = (train - mean) @ components.T
        cov = LedoitWolf().fit(z).covariance_
        residual = ((train - mean) - z @ components) ** 2
        total_var = float(((train - mean) ** 2).sum(1).mean() / train.shape[1])
        residual_var = max(float(residual.sum(1).mean() / max(1, train.shape[1] - k)), 1e-6 * total_var, 1e-12)
        density = cls(mean, components, np.linalg.inv(cov), residual_var, 0.0, quantile)
        density.threshold = float(np.quantile(density.score(val), quantile))
        return density

    def score(self, feats: np.ndarray) -> np.ndarray:
        centred = np.asarray(feats, dtype=np.float64).reshape(-1, len(self.mean)) - self.mean  # no image: (0, D)
        z = centred @ self.components.T
        residual = ((centred - z @ self.components) ** 2).sum(1)
        return np.sqrt(np.einsum("ij,jk,ik->i", z, self.precision, z) + residual / self.residual_var)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def to_dict(self) -> dict:
        """Plain values (lists of float32-rounded numbers): JSON for the model contract, and loadable with weights_only."""
        def plain(a: np.ndarray) -> list:
            return a.astype(np.float32).astype(np.float64).tolist()

        return {"method": METHOD, "mean": plain(self.mean), "components": plain(self.components),
                "precision": plain(self.precision), "residual_var": float(self.residual_var),
                "threshold": float(self.threshold), "quantile": float(self.quantile)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureDensity":
        """From `to_dict` (lists), or from checkpoints written before it (tensors)."""
        def array(v) -> np.ndarray:
            return v.double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)

        return cls(array(d["mean"]), array(d["components"]), array(d["precision"]),
                   float(d["residual_var"]), float(d["threshold"]), float(d["quantile"]))
