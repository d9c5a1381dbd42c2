"""A network the project has never seen, as a user's file holds it: residual adds,
squeeze-excitation, a depthwise conv, a concatenation of two branches and an MLP head
(``make``), plus factories the loader must refuse. Written to a temporary folder outside the
checkout by the tests that use it (tests/test_custom_models.py, tests/test_faults.py)."""

NET = '''
import torch
import torch.nn as nn


def cbr(cin, cout, k=1, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Block(nn.Module):  # expand 1x1 -> depthwise 3x3 -> SE -> project 1x1, plus the input
    def __init__(self, c, hidden):
        super().__init__()
        self.expand, self.dw = cbr(c, hidden), cbr(hidden, hidden, 3, groups=hidden)
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class Branches(nn.Module):  # a 1x1 and a 3x3 branch side by side, concatenated
    def __init__(self, c, a, b):
        super().__init__()
        self.a, self.b = cbr(c, a), cbr(c, b, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 16, 3, 2), Block(16, 48), cbr(16, 32, 3, 2),
                                      Block(32, 64), Branches(32, 24, 40))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(),
                                  nn.Linear(48, num_classes))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make(num_classes=10):
    return Net(num_classes)


def make_imagenet():  # takes no num_classes: its head is replaced
    return Net(1000)


def broken(num_classes):
    raise RuntimeError("weights folder not found")


def not_a_module():
    return {"model": Net()}


class Grouped(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16, 3), cbr(16, 32, 3, groups=4))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class FixedSize(nn.Module):  # a flatten sized for 32x32 inputs only
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv, self.fc = cbr(3, 8, 3, 2), nn.Linear(8 * 16 * 16, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))
'''
