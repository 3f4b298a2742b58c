r"""MeLU's user preference estimator (Lee, Im, Jang, Cho & Chung, "MeLU: Meta-Learned User Preference
Estimator for Cold-Start Recommendation", KDD 2019, arXiv:1908.00413, section 3.1).

Each rated item is one input row ``x`` (layout in :mod:`quickstudy.users.features`):
``[item index | genres (G) | year, item bias, log count | user profile (P)]``. Embeddings of the item
and of the user are concatenated and a stack of fully connected "decision" layers maps them to the
predicted rating:

.. math::

    e_{item} = [E[i];\ W_g g / \max(1, |g|);\ W_s s], \qquad e_{user} = W_u p

    \hat r = W_{out}\, \mathrm{ReLU}(W_2\, \mathrm{ReLU}(W_1 [e_{item}; e_{user}] + b_1) + b_2) + b_{out}

MeLU adapts only the decision layers to each user (its "local update", a MAML inner loop) and learns
the embeddings across users (the "global update"): here ``qs.ANIL(model, head="decision")``. The same
module is trained end to end by MAML, first-order MAML, Reptile and ANIL (last layer only) for comparison.
The output layer's bias starts at ``offset`` (the training ratings' mean), so an untrained model
predicts the global mean.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_int, check_int_sequence, check_number

__all__ = ["MeLU", "SIDE_FEATURES"]

#: item columns after the genres: year, item bias, log count
SIDE_FEATURES = 3


class MeLU(nn.Module):
    """``MeLU(items, genres, profile, embedding_dim=32, hidden=(64, 64), offset=0.0)``.

    Args:
        items: rows of the item-id embedding (items rated in training + 1 for "never rated").
        genres: number of genre columns G.
        profile: number of user-profile columns P.
        embedding_dim: width of each embedding (item id, genres, side features, user).
        hidden: widths of the hidden decision layers.
        offset: initial output (the global mean rating).

    Input ``[n, 1 + G + 3 + P]``, output ``[n, 1]`` (predicted ratings).
    """

    def __init__(self, items: int, genres: int, profile: int, embedding_dim: int = 32,
                 hidden: Sequence[int] = (64, 64), offset: float = 0.0) -> None:
        super().__init__()
        self.items = check_int("MeLU", "items", items)
        self.genres = check_int("MeLU", "genres", genres, minimum=0)
        self.profile = check_int("MeLU", "profile", profile, minimum=0)
        dim = check_int("MeLU", "embedding_dim", embedding_dim)
        sizes = check_int_sequence("MeLU", "hidden", hidden)
        check_number("MeLU", "offset", offset, positive=False)
        self.in_features = 1 + self.genres + SIDE_FEATURES + self.profile
        self.item_embedding = nn.Embedding(self.items, dim)
        nn.init.normal_(self.item_embedding.weight, std=0.01)  # small: rare items start near "unknown"
        self.genre_embedding = nn.Linear(max(self.genres, 1), dim, bias=False)
        self.side_embedding = nn.Linear(SIDE_FEATURES, dim)
        self.user_embedding = nn.Linear(max(self.profile, 1), dim)
        layers: list[nn.Module] = []
        width = 4 * dim
        for size in sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.decision = nn.Sequential(*layers)
        with torch.no_grad():
            self.decision[-1].bias.fill_(float(offset))
        self.feature_dim = 4 * dim
        self.out_features = 1

    def embed(self, x: Tensor) -> Tensor:
        """``[n, 4 * embedding_dim]``: the item and user embeddings the decision layers see."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MeLU expects [n, {self.in_features}] rows (item, {self.genres} genres, "
                             f"{SIDE_FEATURES} side features, {self.profile} profile columns), got {tuple(x.shape)}")
        g_end = 1 + self.genres
        s_end = g_end + SIDE_FEATURES
        item = self.item_embedding(x[:, 0].long())
        genres = x[:, 1:g_end] if self.genres else x.new_zeros(x.shape[0], 1)
        genres = self.genre_embedding(genres / genres.sum(1, keepdim=True).clamp(min=1.0))
        side = self.side_embedding(x[:, g_end:s_end])
        user = self.user_embedding(x[:, s_end:] if self.profile else x.new_zeros(x.shape[0], 1))
        return torch.cat([item, genres, side, user], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.decision(self.embed(x))
