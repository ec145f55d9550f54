"""Cross-domain screen on frozen ImageNet features: which layers and preprocessing carry over to another site.

    .venv/bin/python benchmarks/feature_probe.py [--model efficientnet_lite0] [--img-size 224]
        [--intensity none|equalize|percentile|clahe] [--C 0.003 0.01 0.1]

No training: the backbone stays at its ImageNet weights, so one forward pass per image is the cost. For each feature stage of the backbone (global mean and max pooling of timm's
`forward_intermediates`, shallow to deep) and for the pooled features the classifier sees, a logistic
regression (standardised features, balanced classes) is fitted on the cxr-nih-cohen training split, binary
(infected vs normal) and three-class (P(infected) = 1 - P(normal)), and scored by ROC-AUC on the
cxr-nih-cohen validation and test splits (and the test split's NIH rows), and on all of kermany-peds-train
(another hospital, children), with a 95% patient-level bootstrap interval there. Nothing here chooses a
model: it shows where in the network the transferable signal lives. Research figures only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CXR = SHARED / "cxr-nih-cohen" / "labels.csv"
KERMANY = SHARED / "kermany-peds-train" / "labels.csv"


def stage_features(model, images, prep, batch_size: int = 64) -> list[np.ndarray]:
    """Per stage (shallow to deep, then the classifier's input): (N, features) arrays of frozen features."""
    import torch

    from chestxray.data.datamodule import DecodedDataset, make_loader

    model.eval()
    parts: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for x, _, _ in make_loader(DecodedDataset(images, None, prep.eval_transform()), batch_size, train=False):
            x = prep.model_input(x)
            final, maps = model.forward_intermediates(x)  # one pass: the stages and forward_features' output
            pooled = [torch.cat([m.mean((2, 3)), m.amax((2, 3))], 1) for m in maps]
            pooled.append(model.forward_head(final, pre_logits=True).flatten(1))
            if not parts:
                parts = [[] for _ in pooled]
            for store, f in zip(parts, pooled):
                store.append(f.float().numpy())
    return [np.concatenate(p) for p in parts]


def probe(train: tuple, evals: dict, C: float, multiclass: bool) -> dict[str, np.ndarray]:
    """Scores P(infected)-like of each evaluation set from a logistic regression fitted on `train`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, labels = train
    scaler = StandardScaler().fit(x)
    target = labels if multiclass else (labels != "normal").astype(int)
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit(scaler.transform(x), target)
    normal = list(clf.classes_).index("normal") if multiclass else None

    def score(z):
        z = scaler.transform(z)
        return -clf.predict_log_proba(z)[:, normal] if multiclass else clf.decision_function(z)

    return {name: score(z) for name, z in evals.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--intensity", default="none", choices=("none", "equalize", "percentile", "clahe"))
    ap.add_argument("--C", type=float, nargs="+", default=[0.01], help="inverse L2 strengths of the logistic regression")
    ap.add_argument("--bootstrap", type=int, default=500)
    args = ap.parse_args(argv)
    if not CXR.exists() or not KERMANY.exists():
        print(f"this benchmark needs {CXR} and {KERMANY}", file=sys.stderr)
        return 2
    import torch

    from chestxray.data.datamodule import decode_split
    from chestxray.data.sources import discover, evaluation_samples, patient_groups
    from chestxray.data.transforms import Preprocessing
    from chestxray.evaluation.metrics import bootstrap_ci, binary_metrics
    from chestxray.models.backbones import create_model, normalisation

    t0 = time.time()
    model, origin = create_model(args.model, 1, None, True, 0.0)
    prep = Preprocessing(args.img_size, *normalisation(model), intensity=args.intensity)
    splits = discover(CXR).splits
    sets = {"train": splits["train"], "val": splits["val"], "test": splits["test"], "kermany": evaluation_samples(KERMANY, None)[1]}
    feats, labels, samples = {}, {}, {}
    for name, s in sets.items():
        d = decode_split(s, args.img_size, False, f"decoding {name}")
        feats[name] = stage_features(model, d.images, prep)
        labels[name] = np.array([x.label for x in d.samples])
        samples[name] = d.samples
    nih = np.array([(x.source or "").startswith("nih") for x in samples["test"]])
    y = {k: (v != "normal").astype(int) for k, v in labels.items()}

    def auc(name, p, mask=None):
        t = y[name] if mask is None else y[name][mask]
        return binary_metrics(t, p if mask is None else p[mask])["roc_auc"]

    print(f"\n{args.model} ({origin}), {args.img_size} px, intensity {args.intensity}; frozen ImageNet features, "
          "logistic regression on cxr-nih-cohen train; ROC-AUC")
    print(f"{'features':26s} {'task':10s} {'C':>6s} {'val':>6s} {'test':>6s} {'NIH':>6s}  {'kermany [95% CI]':>22s}")
    n_stages = len(feats["train"])
    for i in range(n_stages):
        dim = feats["train"][i].shape[1]
        name = f"stage {i + 1} mean+max ({dim})" if i < n_stages - 1 else f"classifier input ({dim})"
        for multiclass in (False, True):
            for C in args.C:
                scores = probe((feats["train"][i], labels["train"]), {k: feats[k][i] for k in ("val", "test", "kermany")}, C, multiclass)
                ci = bootstrap_ci(y["kermany"], scores["kermany"], {"t": 0.0}, patient_groups(samples["kermany"]),
                                  args.bootstrap, 0)["t"]["roc_auc"] if args.bootstrap else [float("nan")] * 2
                print(f"{name:26s} {'3-class' if multiclass else 'binary':10s} {C:6g} {auc('val', scores['val']):6.3f} "
                      f"{auc('test', scores['test']):6.3f} {auc('test', scores['test'], nih):6.3f}  "
                      f"{auc('kermany', scores['kermany']):6.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", flush=True)
    print(f"wall time {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
