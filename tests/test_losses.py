import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from avtool.train.losses import clip_loss, max_margin_loss


def _embeddings(seed: int, n: int = 6, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_clip_loss_is_symmetric_and_matches_a_hand_computation():
    v, t = _embeddings(0)
    scale = torch.tensor(10.0)
    assert clip_loss(v, t, scale) == pytest.approx(clip_loss(t, v, scale).item())
    logits = scale * v @ t.t()
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert clip_loss(v, t, scale).item() == pytest.approx(expected.item())
    # Matching pairs drive the loss down.
    assert clip_loss(v, v, scale) < clip_loss(v, t, scale)


def test_max_margin_loss_hand_computed_and_positives_are_not_negatives():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # sim = [[1, .6], [0, .8]]; v2t: relu(.2-1+.6)=0, relu(.2-.8+0)=0; t2v: relu(.2-1+0)=0, relu(.2-.8+.6)=0
    assert max_margin_loss(v, t).item() == pytest.approx(0.0)
    t = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # sim = [[.6, 1], [.8, 0]]: v2t: relu(.2-.6+1)=.6, relu(.2-0+.8)=1; t2v: relu(.2-.6+.8)=.4, relu(.2-0+1)=1.2
    assert max_margin_loss(v, t).item() == pytest.approx((0.6 + 1 + 0.4 + 1.2) / 4)
    everything_positive = torch.ones(2, 2, dtype=torch.bool)
    assert max_margin_loss(v, t, positives=everything_positive).item() == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, local_loss: bool, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    v, t = _embeddings(0, n=8)
    v, t = v.clone().requires_grad_(), t.clone().requires_grad_()
    shard = slice(rank * 4, rank * 4 + 4)
    loss = clip_loss(v[shard], t[shard], torch.tensor(5.0), local_loss=local_loss)
    loss.backward()
    # Plain lists, not tensors: torch's queue shares a tensor through a file descriptor that the parent
    # fetches from this process, which fails ("connection reset") if this process has exited by then.
    queue.put((rank, loss.item(), v.grad[shard].tolist(), t.grad[shard].tolist()))
    dist.destroy_process_group()


@pytest.mark.parametrize("local_loss", [False, True])
def test_gathered_loss_equals_the_single_process_loss_on_the_global_batch(local_loss):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, local_loss, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    v, t = _embeddings(0, n=8)
    v, t = v.clone().requires_grad_(), t.clone().requires_grad_()
    reference = clip_loss(v, t, torch.tensor(5.0))
    reference.backward()
    mean_loss = sum(r[1] for r in results) / 2
    assert mean_loss == pytest.approx(reference.item(), rel=1e-5)
    # all_gather's backward sums every rank's gradient into the gathered rows, so each rank holds
    # world × the global loss's gradient on its rows; DDP's averaging over ranks then gives exactly the
    # single-process gradient of the global loss.
    for rank, _, v_grad, t_grad in results:
        shard = slice(rank * 4, rank * 4 + 4)
        assert torch.allclose(torch.tensor(v_grad), 2 * v.grad[shard], atol=1e-6)
        assert torch.allclose(torch.tensor(t_grad), 2 * t.grad[shard], atol=1e-6)
