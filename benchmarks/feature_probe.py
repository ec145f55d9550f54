"""Cross-domain screen on frozen ImageNet features: which layers and preprocessing carry over to another site.

    .venv/bin/python benchmarks/feature_probe.py [--model efficientnet_lite0] [--img-size 224]
        [--intensity none|equalize|percentile|clahe] [--C 0.003 0.01 0.1] [--debias 2]

No training: the backbone stays at its ImageNet weights, so one forward pass per image is the cost. For each feature stage of the backbone (global mean and max pooling of timm's
`forward_intermediates`, shallow to deep) and for the pooled features the classifier sees, a logistic
regression (standardised features, balanced classes) is fitted on the cxr-nih-cohen training split, binary
(infected vs normal) and three-class (P(infected) = 1 - P(normal)), and scored by ROC-AUC on the
cxr-nih-cohen validation and test splits (and the test split's NIH rows), and on all of kermany-peds-train
(another hospital, children), with a 95% patient-level bootstrap interval there. Nothing here chooses a
model: it shows where in the network the transferable signal lives. Research figures only.

`--debias K` adds a product-of-experts screen (Clark et al. 2019, "Don't take the easy way out"; He et al.
2019, "Unlearn dataset bias"): a binary logistic regression on stage K alone is the bias expert; the
classifier-input regression is then fitted with the bias expert's logit added to its own as a fixed offset
(out-of-fold on the training split, patient-grouped), so it is pushed to explain what the shallow statistics
do not; its own logit alone is scored. That is the cheap form of penalising what a shallow stage predicts.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import CXR, KERMANY


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


def debiased_probe(train_main: np.ndarray, train_bias: np.ndarray, target: np.ndarray, groups: list[str],
                   evals: dict, C: float) -> dict[str, np.ndarray]:
    """Binary scores of a logistic regression on `train_main` fitted with a bias expert's logit as an offset.

    The bias expert (logistic regression on `train_bias`, same C) gives out-of-fold logits on the training
    rows (5 patient-grouped folds); the main model minimises the balanced log loss of its logit plus that
    offset, with the L2 strength sklearn's C implies, and is scored on its own logit.
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    xb = StandardScaler().fit_transform(train_bias)
    bias = cross_val_predict(LogisticRegression(C=C, max_iter=5000, class_weight="balanced"), xb, target,
                             groups=groups or list(range(len(target))), cv=GroupKFold(5), method="decision_function")
    scaler = StandardScaler().fit(train_main)
    x = torch.tensor(scaler.transform(train_main), dtype=torch.float64)
    t = torch.tensor(target, dtype=torch.float64)
    weight = torch.where(t == 1, 0.5 / t.mean(), 0.5 / (1 - t.mean()))  # sklearn's "balanced", normalised
    offset = torch.tensor(bias, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=1000, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b + offset, t, weight=weight, reduction="sum")
        loss = nll + 0.5 / C * (w ** 2).sum()  # sklearn's objective: C * sum(loss) + w.w / 2
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach().numpy(), b.item()
    return {name: scaler.transform(z) @ w + b for name, z in evals.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--intensity", default="none", choices=("none", "equalize", "percentile", "clahe"))
    ap.add_argument("--C", type=float, nargs="+", default=[0.01], help="inverse L2 strengths of the logistic regression")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--debias", type=int, nargs="*", default=[], metavar="K",
                    help="also fit the classifier-input probe against a bias expert on stage K (1-based)")
    args = ap.parse_args(argv)
    if not CXR.exists() or not KERMANY.exists():
        print(f"this benchmark needs {CXR} and {KERMANY}", file=sys.stderr)
        return 2

    from chestxray.data.datamodule import decode_split
    from chestxray.data.sources import discover, evaluation_samples, patient_groups
    from chestxray.data.transforms import Preprocessing
    from chestxray.evaluation.intervals import bootstrap_ci
    from chestxray.evaluation.metrics import binary_metrics
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
    kermany_groups = patient_groups(samples["kermany"])

    def print_row(name: str, task: str, C: float, scores: dict) -> None:
        ci = bootstrap_ci(y["kermany"], scores["kermany"], {"t": 0.0}, kermany_groups,
                          args.bootstrap, 0)["t"]["roc_auc"] if args.bootstrap else [float("nan")] * 2
        print(f"{name:26s} {task:10s} {C:6g} {auc('val', scores['val']):6.3f} "
              f"{auc('test', scores['test']):6.3f} {auc('test', scores['test'], nih):6.3f}  "
              f"{auc('kermany', scores['kermany']):6.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", flush=True)

    n_stages = len(feats["train"])
    for i in range(n_stages):
        dim = feats["train"][i].shape[1]
        name = f"stage {i + 1} mean+max ({dim})" if i < n_stages - 1 else f"classifier input ({dim})"
        for multiclass in (False, True):
            for C in args.C:
                scores = probe((feats["train"][i], labels["train"]), {k: feats[k][i] for k in ("val", "test", "kermany")}, C, multiclass)
                print_row(name, "3-class" if multiclass else "binary", C, scores)
    groups_train = patient_groups(samples["train"])
    for k in args.debias:
        for C in args.C:
            scores = debiased_probe(feats["train"][-1], feats["train"][k - 1], y["train"], groups_train,
                                    {n: feats[n][-1] for n in ("val", "test", "kermany")}, C)
            print_row(f"classifier input - stage {k}", "PoE", C, scores)
    print(f"wall time {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
