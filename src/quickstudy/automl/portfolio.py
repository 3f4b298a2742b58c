"""A fixed, named portfolio of scikit-learn classifier configurations (the knowledge base's columns).

Each configuration has a stable name (``family:key=value,...``) that the knowledge base table, the
recommenders and ``quickstudy recommend`` use; changing a configuration means a new name, so a
committed table never silently refers to something else. 39 configurations over 8 families:

================  ==  =============================================================================
family            n   hyperparameters
================  ==  =============================================================================
logreg            6   C in {0.01, 0.1, 1, 10, 100}; C=1 with balanced class weights (L2, lbfgs)
svm               8   RBF kernel, C in {0.1, 1, 10, 100} x gamma in {1, 10} / n_features
knn               6   k in {1, 3, 7, 15, 31} distance-weighted; k=7 uniform
rf                6   50 trees, max_features in {sqrt, 0.25, 0.5} x min_samples_leaf in {1, 5}
extra_trees       2   50 trees, max_features in {sqrt, 0.5}
hgb               6   HistGradientBoosting, 100 rounds, learning_rate in {0.03, 0.1, 0.3} x
                      max_leaf_nodes in {7, 31}
tree              3   max_depth in {3, 8, None}
naive_bayes, lda  2   Gaussian naive Bayes; LDA with automatic shrinkage
================  ==  =============================================================================

Scale-sensitive models (logreg, svm, knn, lda) get standardised inputs; all get median imputation.
The sizes keep the whole portfolio cheap at <= 1,000 rows: 3-fold CV of all 39 took a median 5.4 s per
PMLB data set on one shared core (at most 170 s; ``docs/automl/fit_seconds.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Configuration", "PORTFOLIO", "portfolio", "get_configuration", "make_estimator", "FAMILIES"]


@dataclass(frozen=True)
class Configuration:
    """One classifier configuration: a family and its hyperparameters; ``name`` is the stable key."""

    family: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            key = ",".join(f"{k}={v}" for k, v in self.params.items())
            object.__setattr__(self, "name", f"{self.family}:{key}" if key else self.family)


def _build() -> list[Configuration]:
    configs: list[Configuration] = []
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        configs.append(Configuration("logreg", {"C": c}))
    configs.append(Configuration("logreg", {"C": 1.0, "class_weight": "balanced"}))
    for c in (0.1, 1.0, 10.0, 100.0):
        for g in (1.0, 10.0):
            configs.append(Configuration("svm", {"C": c, "gamma_scale": g}))
    for k in (1, 3, 7, 15, 31):
        configs.append(Configuration("knn", {"n_neighbors": k, "weights": "distance"}))
    configs.append(Configuration("knn", {"n_neighbors": 7, "weights": "uniform"}))
    for mf in ("sqrt", 0.25, 0.5):
        for leaf in (1, 5):
            configs.append(Configuration("rf", {"max_features": mf, "min_samples_leaf": leaf}))
    for mf in ("sqrt", 0.5):
        configs.append(Configuration("extra_trees", {"max_features": mf}))
    for lr in (0.03, 0.1, 0.3):
        for leaves in (7, 31):
            configs.append(Configuration("hgb", {"learning_rate": lr, "max_leaf_nodes": leaves}))
    for depth in (3, 8, None):
        configs.append(Configuration("tree", {"max_depth": depth}))
    configs.append(Configuration("naive_bayes"))
    configs.append(Configuration("lda"))
    return configs


PORTFOLIO: tuple[Configuration, ...] = tuple(_build())
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(c.family for c in PORTFOLIO))


def portfolio() -> list[Configuration]:
    """The configurations, in their fixed order."""
    return list(PORTFOLIO)


def get_configuration(name: str) -> Configuration:
    """The configuration called ``name``; a ``ValueError`` lists a few valid names otherwise."""
    for config in PORTFOLIO:
        if config.name == name:
            return config
    raise ValueError(f"unknown configuration {name!r}; valid names look like {PORTFOLIO[0].name!r} "
                     f"(see quickstudy.automl.portfolio.PORTFOLIO, {len(PORTFOLIO)} entries)")


def make_estimator(config: Configuration | str, n_features: int = 1, seed: int = 0):
    """A fresh scikit-learn pipeline (imputation, scaling where it matters, the classifier)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(config, str):
        config = get_configuration(config)
    p = dict(config.params)
    scaled = True
    if config.family == "logreg":
        model = LogisticRegression(max_iter=300, **p)
    elif config.family == "svm":
        gamma = p.pop("gamma_scale") / max(1, n_features)  # standardised inputs: 1/n_features == "scale"
        model = SVC(kernel="rbf", gamma=gamma, **p)
    elif config.family == "knn":
        model = KNeighborsClassifier(**p)
    elif config.family == "lda":
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    else:
        scaled = False
        if config.family == "rf":
            model = RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1, **p)
        elif config.family == "extra_trees":
            model = ExtraTreesClassifier(n_estimators=50, random_state=seed, n_jobs=1, **p)
        elif config.family == "hgb":
            model = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=seed, **p)
        elif config.family == "tree":
            model = DecisionTreeClassifier(random_state=seed, **p)
        elif config.family == "naive_bayes":
            model = GaussianNB()
        else:
            raise ValueError(f"unknown configuration family {config.family!r}; expected one of {', '.join(FAMILIES)}")
    steps = [SimpleImputer(strategy="median")] + ([StandardScaler()] if scaled else []) + [model]
    return make_pipeline(*steps)
