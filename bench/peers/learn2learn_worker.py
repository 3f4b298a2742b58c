"""learn2learn 0.2.0, used as in its README / examples/vision/maml_omniglot.py (runs in .peers/venv).

``import learn2learn`` pulls torchvision, gym, scipy, requests, tqdm, PIL and qpth into submodules the
benchmark never touches; they are not installed, so :mod:`_stubs` puts placeholder modules in their
place first (see bench/peers/setup.sh). ``learn2learn.algorithms.MAML`` itself needs torch only.

MAML::

    maml = l2l.algorithms.MAML(conv4_sequential(), lr=inner_lr, first_order=first_order)
    per task: learner = maml.clone(); steps x learner.adapt(CE(learner(sx), sy))
              (CE(learner(qx), qy) / B).backward()

ProtoNet: ``l2l.nn.PrototypicalClassifier(support_embeddings, support_y)`` per task (its prototypes use
``torch.unique`` and a loop over the classes), logits for the query embeddings, ``(CE / B).backward()``.
Reptile: learn2learn has no Reptile class (its example is a hand-written loop), so no cell.
"""

from __future__ import annotations

import sys

from bench.peers import _stubs

STUBBED = _stubs.install_learn2learn_stubs()
try:
    import learn2learn as l2l
except Exception as _error:  # noqa: BLE001 - e.g. an installed torchvision/scipy learn2learn 0.2.0 cannot use
    print(f"import learn2learn failed ({type(_error).__name__}: {_error}); retrying with all of "
          f"{', '.join(_stubs.LEARN2LEARN_OPTIONAL)} stubbed", file=sys.stderr)
    STUBBED = _stubs.install_learn2learn_stubs(force=True)
    import learn2learn as l2l

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.peers.common import reference_model  # noqa: E402

STUBBED = STUBBED + _stubs.stubbed_extensions()

LIBRARY = "learn2learn"
SUPPORTS = {"maml", "protonet"}
MODELS = ("conv4", "resnet12")  # the user's model of the cell (common.reference_model)
NOTES = f"l2l.algorithms.MAML clone/adapt; stubbed imports: {', '.join(STUBBED) or 'none'}"


def version() -> str:
    return l2l.__version__


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    b = cell.meta_batch
    if cell.algo == "maml":
        model = reference_model(cell, cell.ways).to(sx.device, dtype)
        maml = l2l.algorithms.MAML(model, lr=cell.inner_lr, first_order=cell.first_order)
        opt = torch.optim.Adam(maml.parameters(), lr=cell.outer_lr)

        def step():
            opt.zero_grad()
            for i in range(b):
                learner = maml.clone()
                for _ in range(cell.steps):
                    learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
                logits = learner(qx[i])
                (F.cross_entropy(logits, qy[i]) / b).backward()
                (logits.detach().argmax(-1) == qy[i]).float().mean()
            opt.step()

        return step, list(model.parameters())

    model = reference_model(cell, None).to(sx.device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cell.outer_lr)

    def step():
        opt.zero_grad()
        for i in range(b):
            classifier = l2l.nn.PrototypicalClassifier(model(sx[i]), sy[i])
            logits = classifier(model(qx[i]))
            (F.cross_entropy(logits, qy[i]) / b).backward()
        opt.step()

    return step, list(model.parameters())
