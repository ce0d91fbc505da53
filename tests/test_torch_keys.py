"""torch state_dicts load unchanged: torch.nn.RNN/LSTM/GRU's keys (weight_ih_l0, ..._l1, ..._reverse)
under a layer's prefix, num_layers stacks, strict=True/False with torch's IncompatibleKeys, and
shape mismatches that always raise."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import GRU, LSTM, RNN, BatchNorm1D, Dense
from fastnn.model import IncompatibleKeys, StateDictError
from seq_helpers import gradcheck

torch = pytest.importorskip("torch")

CELLS = {"RNN": (RNN, torch.nn.RNN), "LSTM": (LSTM, torch.nn.LSTM), "GRU": (GRU, torch.nn.GRU)}
N, T, F, H = 3, 5, 4, 3


class _TorchNet(torch.nn.Module):
    """Linear -> RNN/LSTM/GRU (batch first) -> Linear, keyed '0.', '1.', '2.' as a Sequential."""

    def __init__(self, cell, layers, bi, sequences):
        super().__init__()
        dirs = 2 if bi else 1
        self.add_module("0", torch.nn.Linear(F, F))
        self.add_module("1", cell(F, H, num_layers=layers, bidirectional=bi, batch_first=True))
        self.add_module("2", torch.nn.Linear(H * dirs, 2))
        self.dirs, self.sequences = dirs, sequences

    def forward(self, x):
        out, state = self._modules["1"](self._modules["0"](x))
        if not self.sequences:   # the top layer's final state of each direction, forward first
            h_n = state[0] if isinstance(state, tuple) else state
            out = h_n[-self.dirs:].permute(1, 0, 2).reshape(x.shape[0], -1)
        return self._modules["2"](out)


def _pair(cell, layers, bi, sequences, backend="numpy"):
    ours, theirs = CELLS[cell]
    torch.manual_seed(0)
    tnet = _TorchNet(theirs, layers, bi, sequences).double()
    model = fnn.Sequential(Dense(F, F), ours(F, H, return_sequences=sequences, bidirectional=bi,
                                             num_layers=layers), Dense(H * (2 if bi else 1), 2),
                           backend=backend, dtype="float64", seed=1)
    return tnet, model


CASES = [("RNN", 2, False, False), ("RNN", 2, True, True), ("LSTM", 2, False, True),
         ("LSTM", 2, True, False), ("GRU", 2, False, False), ("GRU", 2, True, True), ("LSTM", 1, True, True)]


@pytest.mark.parametrize("cell,layers,bi,sequences", CASES)
def test_torch_state_dict_loads_unchanged_and_computes_the_same(backend, cell, layers, bi, sequences):
    tnet, model = _pair(cell, layers, bi, sequences, backend.name)
    sd = tnet.state_dict()
    assert "1.weight_ih_l0" in sd and ("1.bias_hh_l0_reverse" in sd) == bi
    result = model.load_state_dict(sd)   # torch's OrderedDict of tensors, as it is
    assert result == IncompatibleKeys([], []) and repr(result) == "<All keys matched successfully>"
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, T, F))
    tx = torch.tensor(x, requires_grad=True)
    ty = tnet(tx)
    probe = rng.standard_normal(tuple(ty.shape))
    (ty * torch.tensor(probe)).sum().backward()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y = model.forward(x)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-9)
    model.train()
    model.forward(x)
    model.zero_grad()
    dx = model.backward(probe, return_input_grad=True)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-9)
    aliases = model._torch_aliases()
    grads = {p.name: p.grad for p in model.parameters()}
    for name, param in tnet.named_parameters():
        np.testing.assert_allclose(grads[aliases.get(name, name)], param.grad.numpy(), rtol=1e-9, atol=1e-9,
                                   err_msg=name)
    np.testing.assert_allclose(model.predict(x), ty.detach().numpy(), rtol=1e-9, atol=1e-9)


def test_stacked_layer_gradients_match_central_differences(backend):
    gradcheck(backend, [LSTM(2, 3, return_sequences=True, bidirectional=True, num_layers=3), Dense(6, 2)],
              (2, 3, 2), seed=3)
    gradcheck(backend, [GRU(2, 2, num_layers=2)], (2, 3, 2), seed=4)


def test_fastnn_keys_still_load_and_the_stack_saves_and_loads(tmp_path):
    _, model = _pair("GRU", 2, True, False)
    keys = list(model.state_dict())
    assert keys[:2] == ["0.weight", "0.bias"] and "1.weight_ih" in keys and "1.weight_ih_l1_reverse" in keys
    other = _pair("GRU", 2, True, False)[1]
    other.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})   # fastnn's own names
    assert np.array_equal(other.state_dict()["1.weight_ih_l1"], model.state_dict()["1.weight_ih_l1"] + 1)
    path = tmp_path / "stack.safetensors"
    other.save(path)
    again = fnn.load(path)
    assert again.layers[1].num_layers == 2
    x = np.random.default_rng(0).standard_normal((2, T, F))
    np.testing.assert_array_equal(again.predict(x), other.predict(x))
    # torch's names for the model's keys load into torch too (the reverse direction)
    tnet = _pair("GRU", 2, True, False)[0]
    names = {v: k for k, v in other._torch_aliases().items()}
    tnet.load_state_dict({names.get(k, k): torch.tensor(v) for k, v in other.state_dict().items()})
    np.testing.assert_allclose(tnet(torch.tensor(x)).detach().numpy(), other.predict(x), rtol=1e-9, atol=1e-9)


def test_strict_false_reports_missing_and_unexpected_keys_as_torch_does():
    tnet, model = _pair("LSTM", 2, True, True)
    sd = dict(tnet.state_dict())
    before = model.state_dict()
    del sd["1.weight_hh_l1"], sd["2.bias"]
    sd["3.weight"] = torch.zeros(2)
    result = model.load_state_dict(sd, strict=False)
    assert isinstance(result, tuple) and result.missing_keys == ["1.weight_hh_l1", "2.bias"]
    assert result.unexpected_keys == ["3.weight"]
    missing, unexpected = result   # unpacks like torch's NamedTuple
    # torch reports the same for the same keys (its own names; ours differ only for layer 0)
    t_result = _pair("LSTM", 2, True, True)[0].load_state_dict(sd, strict=False)
    assert t_result.missing_keys == missing and t_result.unexpected_keys == unexpected
    after = model.state_dict()
    assert np.array_equal(after["1.weight_hh_l1"], before["1.weight_hh_l1"])    # left as it was
    assert np.array_equal(after["2.bias"], before["2.bias"])
    np.testing.assert_array_equal(after["1.weight_ih"], sd["1.weight_ih_l0"].numpy())   # loaded
    np.testing.assert_array_equal(after["1.weight_ih_l1_reverse"], sd["1.weight_ih_l1_reverse"].numpy())


def test_strict_true_lists_both_and_loads_nothing():
    tnet, model = _pair("RNN", 2, False, False)
    sd = dict(tnet.state_dict())
    before = model.state_dict()
    del sd["1.bias_ih_l1"]
    sd["1.weight_ih_l2"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "1.bias_ih_l1"') as info:
        model.load_state_dict(sd)
    assert 'Unexpected key(s) in state_dict: "1.weight_ih_l2"' in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, StateDictError)
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("strict", [True, False])
def test_a_shape_mismatch_always_raises_naming_the_key_and_both_shapes(strict):
    tnet, model = _pair("GRU", 2, False, True)
    sd = dict(tnet.state_dict())
    sd["1.weight_hh_l0"] = torch.zeros(9, 4)
    before = model.state_dict()
    with pytest.raises(StateDictError, match=r"1\.weight_hh_l0 \(fastnn's 1\.weight_hh\).*\(9, 4\).*\(9, 3\)"):
        model.load_state_dict(sd, strict=strict)
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_state_dicts_get_clear_errors():
    tnet, model = _pair("RNN", 1, False, False)
    sd = dict(tnet.state_dict())
    with pytest.raises(TypeError, match="strict must be True or False"):
        model.load_state_dict(sd, strict="yes")
    with pytest.raises(TypeError, match="takes a mapping"):
        model.load_state_dict([("0.weight", np.zeros((F, F)))])
    with pytest.raises(StateDictError, match="name the same tensor"):
        model.load_state_dict({**sd, "1.weight_ih": sd["1.weight_ih_l0"].numpy()})
    with pytest.raises(StateDictError, match="1.bias_hh_l0 holds NaN"):
        model.load_state_dict({**sd, "1.bias_hh_l0": torch.full((H,), float("nan"))})
    with pytest.raises(StateDictError, match="not numeric"):
        model.load_state_dict({**sd, "0.bias": np.array(["a"] * F)})
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        LSTM(2, 2, num_layers=0)


def test_batchnorm_state_dict_with_torch_counter_loads():
    tm = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()
    tm.train()
    tm(torch.randn(8, 4, dtype=torch.float64))
    model = fnn.Sequential(Dense(4, 3), BatchNorm1D(3), backend="numpy", dtype="float64")
    assert model.load_state_dict(tm.state_dict()).missing_keys == []   # int64 num_batches_tracked too
    tm.eval()
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_allclose(model.predict(x), tm(torch.tensor(x)).detach().numpy(), rtol=1e-9, atol=1e-9)


def test_a_stacked_bidirectional_layer_on_the_cuda_backend_matches_numpy():
    """num_layers feeds device arrays between the layers (the CUDA simulator where there is no GPU)."""
    from test_cuda import BE, dev
    rng = np.random.default_rng(5)
    x, probe = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 4))
    results = []
    for name in ("numpy", BE):
        model = fnn.Sequential(LSTM(2, 2, return_sequences=True, bidirectional=True, num_layers=2),
                               backend=name, dtype="float64", seed=0)
        y = model.forward(x)
        model.zero_grad()
        dx = model.backward(probe, return_input_grad=True)
        host = (lambda a: np.asarray(a)) if name == "numpy" else dev.to_host
        results.append((host(y), host(dx), {p.name: host(p.grad) for p in model.parameters()}))
    (y0, dx0, g0), (y1, dx1, g1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-9, atol=1e-12)
    assert g0.keys() == g1.keys() and "0.weight_hh_l1_reverse" in g0
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-9, atol=1e-12, err_msg=k)
