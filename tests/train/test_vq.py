"""Quantiser training pieces against hand-computed values on toy codebooks."""

from __future__ import annotations

import pytest
import torch

from socodec.nn.analyzer import ProductQuantizer
from socodec.train.model import ClipSettings, random_clip
from socodec.train.vq import (EmaQuantizerTrainer, VQSettings, consistent_sums, ema_update, kmeans, ordered_keep,
                              smoothed_counts)


def test_kmeans_finds_two_separated_clusters_from_any_seeds():
    a = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    b = torch.tensor([[10.0, 10.0], [10.0, 12.0], [12.0, 10.0]])
    x = torch.cat([a, b])
    for seed in range(6):  # every pair of seeds, both in one cluster included, ends at the two means
        centroids, counts = kmeans(x, 2, 5, torch.Generator().manual_seed(seed))
        order = centroids[:, 0].argsort()
        torch.testing.assert_close(centroids[order], torch.tensor([[2 / 3, 2 / 3], [32 / 3, 32 / 3]]))
        assert counts[order].tolist() == [3.0, 3.0]


def test_kmeans_both_seeds_in_one_cluster_by_hand():
    # seeds (0,0) and (0,2): round 1 gives c0 = (1,0) and c1 = mean((0,2), B) = (8, 8.5); round 2 separates A and B
    x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0], [12.0, 10.0]])
    seed = next(s for s in range(100) if sorted(torch.randperm(6, generator=torch.Generator().manual_seed(s))[:2].tolist()) == [0, 1])
    gen = torch.Generator().manual_seed(seed)
    centroids, counts = kmeans(x, 2, 1, gen)  # one round: the first update only
    first = torch.randperm(6, generator=torch.Generator().manual_seed(seed))[:2].tolist()
    expect = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([8.0, 8.5])}
    for row, sample in enumerate(first):
        torch.testing.assert_close(centroids[row], expect[sample])
    assert sorted(counts.tolist()) == [2.0, 4.0]


def test_kmeans_empty_cluster_keeps_its_centroid_and_few_samples_repeat():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]])
    centroids, counts = kmeans(x, 3, 4, torch.Generator().manual_seed(0))
    assert sorted(counts.tolist()) == [0.0, 2.0, 2.0]
    empty = int(counts.argmin())
    assert centroids[empty].tolist() in ([0.0, 0.0], [10.0, 0.0])  # still the seed sample
    few, few_counts = kmeans(torch.tensor([[1.0], [3.0]]), 4, 3, torch.Generator().manual_seed(1))
    assert set(few.flatten().tolist()) <= {1.0, 3.0} and few_counts.sum() == 2


def test_ema_update_by_hand():
    embed = torch.zeros(2, 2)
    cluster_size = torch.tensor([2.0, 2.0])
    embed_avg = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    counts = torch.tensor([3.0, 1.0])
    sums = torch.tensor([[3.0, 3.0], [1.0, -1.0]])
    ema_update(embed, cluster_size, embed_avg, counts, sums, decay=0.5, epsilon=0.5)
    # N = 0.5*2 + 0.5*n = [2.5, 1.5];  A = [[2.5, 1.5], [0.5, 0.5]]
    # N' = (N + 0.5) / (4 + 2*0.5) * 4 = [2.4, 1.6];  C = A / N'
    torch.testing.assert_close(cluster_size, torch.tensor([2.5, 1.5]))
    torch.testing.assert_close(embed_avg, torch.tensor([[2.5, 1.5], [0.5, 0.5]]))
    torch.testing.assert_close(embed, torch.tensor([[2.5 / 2.4, 1.5 / 2.4], [0.5 / 1.6, 0.5 / 1.6]]))


def test_consistent_sums_reproduce_the_codebook():
    embed = torch.randn(5, 3)
    size = torch.tensor([0.0, 1.0, 4.0, 2.5, 0.1])
    torch.testing.assert_close(consistent_sums(embed, size, 1e-5) / smoothed_counts(size, 1e-5)[:, None], embed)


def test_ordered_dropout_keeps_a_prefix_with_the_specified_probabilities():
    keep = ordered_keep(40000, 4, torch.Generator().manual_seed(0)).float()
    assert keep[:, 0].all()
    assert (keep[:, 1:] <= keep[:, :-1]).all()  # kept streams are always the first k
    rates = keep.mean(0).tolist()
    for k, rate in enumerate(rates, start=1):
        assert abs(rate - (5 - k) / 4) < 0.01, rates
    kept = keep.sum(1)
    for k in range(1, 5):  # k uniform over 1..4
        assert abs(float((kept == k).float().mean()) - 0.25) < 0.01


def _toy_quantizer() -> tuple[ProductQuantizer, EmaQuantizerTrainer]:
    """2 streams x 2 sub-codebooks of 2 one-dimensional codewords {-1, +1}; identity projections."""
    vq = ProductQuantizer(4, (2, 2), (1, 1), 2)
    with torch.no_grad():
        for lin in (vq.project_in, vq.project_out):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
        for cb in vq.codebooks:
            cb.embed.copy_(torch.tensor([[-1.0], [1.0]]))
    trainer = EmaQuantizerTrainer(vq)
    for st in trainer.stats:
        st.cluster_size.fill_(1.0)
    trainer.reseed(vq, 1e-5)
    return vq, trainer


X = torch.tensor([[[0.4, -2.0, 0.1, 3.0], [-0.2, 0.5, -3.0, 1.0]]])


def test_quantiser_forward_by_hand():
    vq, trainer = _toy_quantizer()
    x = X.clone().requires_grad_(True)
    settings = VQSettings(decay=0.5, epsilon=1e-5, ordered_dropout=False)
    out = trainer(vq, x, torch.ones(1, 2, dtype=torch.bool), settings, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.quant.detach(), torch.tensor([[[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, 1.0]]]))
    # per chunk mean (q - z)^2: 0.5, 0.625, 2.405, 2.0 -> their mean
    assert out.commitment.item() == pytest.approx((0.5 + 0.625 + 2.405 + 2.0) / 4)
    assert out.tokens.tolist() == [[[1, 3], [2, 2]]]  # i0 + 2*i1, i2 + 2*i3
    out.quant.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # straight-through: identity gradient
    # EMA of chunk 0: counts [1, 1], sums [-0.2, 0.4]; A = 0.5*[-1, 1] + 0.5*[-0.2, 0.4]; N' = 1
    torch.testing.assert_close(vq.codebooks[0].embed, torch.tensor([[-0.6], [0.7]]))
    torch.testing.assert_close(trainer.stats[0].cluster_size, torch.tensor([1.0, 1.0]))


def test_padding_frames_are_left_out():
    vq, trainer = _toy_quantizer()
    mask = torch.tensor([[True, False]])
    out = trainer(vq, X.clone(), mask, VQSettings(decay=0.5, ordered_dropout=False), torch.Generator())
    assert out.commitment.item() == pytest.approx((0.36 + 1.0 + 0.81 + 4.0) / 4)
    # chunk 0 saw only frame 0 (0.4 -> code 1): code 0's count decays, code 1 moves towards 0.4
    torch.testing.assert_close(trainer.stats[0].cluster_size, torch.tensor([0.5, 1.0]))


def test_dropped_streams_are_zero_before_project_out():
    vq, trainer = _toy_quantizer()
    x = X.repeat(64, 1, 1)
    out = trainer(vq, x, torch.ones(64, 2, dtype=torch.bool), VQSettings(), torch.Generator().manual_seed(3))
    assert out.keep[:, 0].all() and not out.keep[:, 1].all() and out.keep[:, 1].any()
    stream1 = out.quant[..., 2:].detach()
    assert (stream1[~out.keep[:, 1]] == 0).all()
    assert (stream1[out.keep[:, 1]].abs() == 1).all()
    assert (out.quant[..., :2].abs() == 1).all()


def test_first_forward_initialises_empty_codebooks_by_kmeans():
    vq = ProductQuantizer(4, (2, 2), (1, 1), 2)
    trainer = EmaQuantizerTrainer(vq)
    with torch.no_grad():
        for lin in (vq.project_in, vq.project_out):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    trainer.reseed(vq, 1e-5)  # all-zero codebooks stay uninitialised
    assert all(st.inited.item() == 0 for st in trainer.stats)
    out = trainer(vq, X.clone(), torch.ones(1, 2, dtype=torch.bool), VQSettings(ordered_dropout=False),
                  torch.Generator().manual_seed(0))
    assert all(st.inited.item() == 1 for st in trainer.stats)
    # two frames, two codes: k-means puts one codeword on each value, assignment uses them
    assert out.commitment.item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(out.quant.detach(), X)


def test_random_clip_takes_scrambled_valid_frames():
    mel = torch.arange(300, dtype=torch.float32)[None, :, None].repeat(2, 1, 3)  # value = frame index
    frames = [300, 120]
    clips = random_clip(mel, frames, ClipSettings(), torch.Generator().manual_seed(0))
    # M = max(100, longest clip), the longest clip being 25-75 % of 300 frames
    assert clips.shape[0] == 2 and clips.shape[2] == 3 and 100 <= clips.shape[1] < 226
    for b, n in enumerate(frames):
        values = clips[b, :, 0].unique()
        assert (values.diff() == 1).all()  # one contiguous stretch of the item's own frames
        assert values.min() >= 0 and values.max() < n
        assert 3 * int(0.25 * n / 3) - 3 <= values.numel() <= 0.75 * n
    seen = set()
    for seed in range(20):  # the three pieces come in a random order
        first = random_clip(mel[:1], [300], ClipSettings(), torch.Generator().manual_seed(seed))[0, :, 0]
        piece = int(first.unique().numel()) // 3
        starts = [int(first[i * piece]) for i in range(3)]
        seen.add(tuple(sorted(range(3), key=lambda i: starts[i])))
    assert len(seen) > 1


def test_dead_codes_take_batch_vectors():
    vq, trainer = _toy_quantizer()
    settings = VQSettings(decay=0.5, ordered_dropout=False, dead_code_fraction_of_mean=0.5)
    x = torch.tensor([[[0.4, 2.0, 0.1, 3.0], [0.6, 0.5, 3.0, 1.0]]])  # chunk 0: both frames pick code 1
    trainer(vq, x, torch.ones(1, 2, dtype=torch.bool), settings, torch.Generator().manual_seed(0))
    # chunk 0: N = 0.5*[1, 1] + 0.5*[0, 2] = [0.5, 1.5]; mean 1.0, threshold 0.5: code 0 is not below it
    torch.testing.assert_close(trainer.stats[0].cluster_size, torch.tensor([0.5, 1.5]))
    assert vq.codebooks[0].embed[0].item() == pytest.approx(-1.0, abs=1e-4)
    trainer(vq, x, torch.ones(1, 2, dtype=torch.bool), settings, torch.Generator().manual_seed(0))
    # N = [0.25, 1.75]: code 0 is dead (0.25 < 0.5) and becomes one of this batch's chunk-0 values
    assert vq.codebooks[0].embed[0].item() in (pytest.approx(0.4), pytest.approx(0.6))
    assert trainer.stats[0].cluster_size[0].item() == pytest.approx(1.1 * 0.5)
    st = trainer.stats[0]
    torch.testing.assert_close(st.embed_avg / smoothed_counts(st.cluster_size, 1e-5)[:, None], vq.codebooks[0].embed)


def test_warm_up_passes_the_continuous_input_and_still_tracks_codebooks():
    vq, trainer = _toy_quantizer()
    x = X.clone().requires_grad_(True)
    settings = VQSettings(decay=0.5, ordered_dropout=False, enabled=False)
    out = trainer(vq, x, torch.ones(1, 2, dtype=torch.bool), settings, torch.Generator())
    torch.testing.assert_close(out.quant.detach(), X)  # identity projections: the input itself
    assert out.commitment.item() == 0.0
    assert out.tokens.tolist() == [[[1, 3], [2, 2]]]  # assignments still made
    torch.testing.assert_close(vq.codebooks[0].embed, torch.tensor([[-0.6], [0.7]]))  # and the EMA step


def test_loaded_counts_that_are_not_counts_become_uniform():
    vq, trainer = _toy_quantizer()
    for bad in (torch.tensor([-1.0, 2.0]), torch.tensor([float("nan"), 1.0]), torch.zeros(2)):
        trainer.stats[0].cluster_size.copy_(bad)
        trainer.reseed(vq, 1e-5)
        assert trainer.stats[0].cluster_size.tolist() == [1.0, 1.0]
        torch.testing.assert_close(trainer.stats[0].embed_avg, vq.codebooks[0].embed)
    trainer.stats[1].cluster_size.copy_(torch.tensor([3.0, 0.5]))
    trainer.reseed(vq, 1e-5)
    assert trainer.stats[1].cluster_size.tolist() == [3.0, 0.5]  # real counts are kept
