"""easyfsl 1.5.0, used as in its README / notebooks/episodic_training.ipynb (runs in .peers/venv).

easyfsl's methods are ``nn.Module`` s around the user's backbone. One meta-step, per task i (one backward per task,
as every other row)::

    model.process_support_set(sx_i, sy_i)          # support features (and FCE context), stored on the module
    scores = model(qx_i)                           # query features -> scores
    (loss(scores, qy_i) / B).backward()

ProtoNet: ``PrototypicalNetworks(backbone)``: scores = -Euclidean distance to the class means (quickstudy: minus the
squared distance, the paper's; the same work), cross-entropy.
Matching Networks: ``MatchingNetworks(backbone, feature_dimension=64)``: easyfsl always runs full-context
embeddings (a bidirectional ``nn.LSTM`` over the support features, an ``nn.LSTMCell`` attention loop with as many
steps as support examples) and leaves the query unnormalised; its scores are log-probabilities, so the loss is
``nll_loss``, as its docstring says. quickstudy's row is ``MatchingNet(fce=True, normalize_query=False)`` with the
same K; the LSTMs differ in form (easyfsl's start from h = the query feature, two biases per gate stack), not in size.
Relation Networks: ``RelationNetworks(backbone, feature_dimension=64)`` on the 64 x 7 x 7 maps (its default relation
module: conv 128 -> 64 with batch norm, ReLU, adaptive max-pool to 5 x 5, conv 64 -> 64 (3 x 3), batch norm, ReLU,
global max-pool, 64 -> 8 -> 1, sigmoid; quickstudy's: the paper's 2x2 max-pools, 7 -> 3 -> 1), ``mse_loss`` on
the one-hot targets, as the paper and easyfsl's docstring say.

easyfsl imports ``torchvision.models.resnet`` in its predesigned modules (none is used here); there is no CPU
torchvision build for torch 2.13 on these machines, so :mod:`_stubs` stands in for it when it is not installed.
"""

from __future__ import annotations

from bench.peers import _stubs

STUBBED = _stubs.install_learn2learn_stubs(roots=("torchvision",))

import easyfsl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from easyfsl.methods import MatchingNetworks, PrototypicalNetworks, RelationNetworks  # noqa: E402

from bench.peers.common import reference_model  # noqa: E402

LIBRARY = "easyfsl"
SUPPORTS = {"protonet", "matchingnet", "relationnet"}
MODELS = ("conv4",)
NOTES = ("process_support_set + forward per task (PrototypicalNetworks; MatchingNetworks, FCE always on; "
         "RelationNetworks, its default relation module, MSE)")


def version() -> str:
    return easyfsl.__version__


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    b = cell.meta_batch
    backbone = reference_model(cell, None, flatten=cell.algo != "relationnet")
    if cell.algo == "protonet":
        model, loss_fn = PrototypicalNetworks(backbone), F.cross_entropy
    elif cell.algo == "matchingnet":
        model, loss_fn = MatchingNetworks(backbone, feature_dimension=64), F.nll_loss
    else:
        model = RelationNetworks(backbone, feature_dimension=64)

        def loss_fn(scores, labels):
            return F.mse_loss(scores, F.one_hot(labels, scores.shape[-1]).to(scores.dtype))
    model = model.to(sx.device, dtype)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cell.outer_lr)

    def step():
        opt.zero_grad()
        for i in range(b):
            model.process_support_set(sx[i], sy[i])
            scores = model(qx[i])
            (loss_fn(scores, qy[i]) / b).backward()
            (scores.detach().argmax(-1) == qy[i]).float().mean()
        opt.step()

    return step, list(backbone.parameters())
