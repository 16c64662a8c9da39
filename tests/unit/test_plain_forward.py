"""packaging/forward.py: the built-in layer stacks run without nn.Module's per-call work, to the same bits."""

import torch
from torch import nn

from loopline.config import TrainingConfig
from loopline.packaging.forward import plain_forward
from loopline.train.models import linear, mlp


def test_the_built_in_models_give_the_same_bits_as_the_module():
    torch.manual_seed(0)
    cfg = TrainingConfig.model_validate({"hidden_sizes": [32, 16], "dropout": 0.3})
    for model in (mlp(11, 3, cfg), linear(11, 1, cfg)):
        model.eval()
        forward = plain_forward(model)
        assert forward is not None
        for rows in (1, 7, 300):
            x = torch.randn(rows, 11)
            with torch.inference_mode():
                assert torch.equal(forward(x), model(x))


def test_a_model_in_training_mode_is_called_as_the_module():
    torch.manual_seed(0)
    model = mlp(5, 1, TrainingConfig.model_validate({"hidden_sizes": [64], "dropout": 0.5}))
    forward = plain_forward(model)
    model.train()
    x = torch.ones(200, 5)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)
    assert torch.equal(forward(x), expected)  # the same dropout draws: the module ran
    model.eval()
    assert not torch.equal(forward(x), expected)


def test_other_modules_and_hooked_ones_are_left_to_the_module():
    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert plain_forward(Custom(3, 1)) is None
    assert plain_forward(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))) is None
    hooked = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    hooked[0].register_forward_hook(lambda module, args, out: out * 0)
    assert plain_forward(hooked) is None


def test_a_hook_on_every_module_leaves_the_model_to_the_module():
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda module, args, out: out)
    try:
        assert plain_forward(nn.Sequential(nn.Linear(3, 4), nn.ReLU())) is None
    finally:
        handle.remove()
    assert plain_forward(nn.Sequential(nn.Linear(3, 4), nn.ReLU())) is not None
