"""The seed's timeline tables as data: the vendor table and the milestones, in the seed's order.

Source: `shared/seed/000_5542642e4953c5ff.txt`, the blog post 深度学习三
(基于Python的理论和实现, LXG, 2026-02-13), section "GPU 进入深度学习的时间表".
The `*_zh` fields are the seed's cells exactly as written; the others are an English rendering.
Years are kept as the seed gives them: a single year has `entered_from == entered_to`, and
NVIDIA's two facts (the platform in 2007, researchers training deep nets in 2009-2010) are both kept.

The migration `0002_seed_timeline` inserts these rows; a change here needs a new migration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SEED_PATH = "shared/seed/000_5542642e4953c5ff.txt"
SEED_SOURCE = f"{SEED_PATH} (深度学习三: 基于Python的理论和实现, LXG, 2026-02-13)"
# The seed named as a reader would cite it: its title and subtitle, author and date, from its front matter.
SEED_CITATION = "“深度学习三: 基于Python的理论和实现”, blog post by LXG, 2026-02-13"


@dataclass(frozen=True)
class VendorRow:
    """One row of the seed's table 「GPU厂商进入深度学习领域时间对比」."""

    vendor: str
    vendor_zh: str
    platform: str
    platform_zh: str
    platform_year: int | None
    entered_from: int
    entered_to: int
    entered: str
    entered_zh: str
    note: str
    note_zh: str

    def as_row(self, position: int) -> dict[str, Any]:
        """The row as inserted into `timeline_vendors`."""
        return {"position": position, **asdict(self), "source": SEED_SOURCE}


@dataclass(frozen=True)
class MilestoneRow:
    """One event of the seed's timeline (the 1986 sentence above the table, then the table's rows)."""

    year: int
    event: str
    event_zh: str
    note: str
    note_zh: str

    def as_row(self, position: int) -> dict[str, Any]:
        """The row as inserted into `timeline_milestones`."""
        return {"position": position, **asdict(self), "source": SEED_SOURCE}


VENDORS: tuple[VendorRow, ...] = (
    VendorRow(
        vendor="NVIDIA",
        vendor_zh="NVIDIA",
        platform="CUDA",
        platform_zh="CUDA",
        platform_year=2007,
        entered_from=2009,
        entered_to=2010,
        entered="2007 (platform released), 2009–2010 (researchers begin training deep networks)",
        entered_zh="2007（平台发布），2009–2010（研究者开始训练深度网络）",
        note="The first mature parallel-computing toolkit, with a complete ecosystem; "
        "GPUs became the mainstream way to train deep networks",
        note_zh="第一个成熟并行计算工具，生态完善，GPU训练深度网络主流",
    ),
    VendorRow(
        vendor="AMD",
        vendor_zh="AMD",
        platform="Stream SDK / OpenCL",
        platform_zh="Stream SDK / OpenCL",
        platform_year=None,
        entered_from=2009,
        entered_to=2012,
        entered="2009–2012",
        entered_zh="2009–2012",
        note="Tools and ecosystem less mature than CUDA; a few research teams tried training neural networks",
        note_zh="工具和生态不如 CUDA 成熟，少数研究团队尝试训练神经网络",
    ),
    VendorRow(
        vendor="Intel",
        vendor_zh="Intel",
        platform="CPU / Xeon Phi / FPGA",
        platform_zh="CPU / Xeon Phi / FPGA",
        platform_year=None,
        entered_from=2007,
        entered_to=2012,
        entered="2007–2012",
        entered_zh="2007–2012",
        note="Mainly CPUs; Xeon Phi for parallel computing, FPGAs for experimental acceleration; "
        "general-purpose GPU computing lagged behind",
        note_zh="以 CPU 为主，Xeon Phi 用于并行计算，FPGA 做实验性加速，GPU通用计算滞后",
    ),
    VendorRow(
        vendor="IBM",
        vendor_zh="IBM",
        platform="Cell/Broadband Engine",
        platform_zh="Cell/Broadband Engine",
        platform_year=None,
        entered_from=2008,
        entered_to=2011,
        entered="2008–2011",
        entered_zh="2008–2011",
        note="The PS3's GPU/Cell architecture was used for small neural-network experiments; "
        "real large-scale training was limited",
        note_zh="PS3 GPU/Cell 架构用于小型神经网络实验，实际大规模训练受限",
    ),
    VendorRow(
        vendor="ARM",
        vendor_zh="ARM",
        platform="Mali GPU",
        platform_zh="Mali GPU",
        platform_year=None,
        entered_from=2010,
        entered_to=2013,
        entered="2010–2013",
        entered_zh="2010–2013",
        note="Low-power mobile GPU, suited to lightweight networks or embedded inference; "
        "limited training capability",
        note_zh="移动端低功耗 GPU，适合轻量级网络或嵌入式推理，训练能力有限",
    ),
    VendorRow(
        vendor="Google",
        vendor_zh="Google",
        platform="TPU (Tensor Processing Unit)",
        platform_zh="TPU (Tensor Processing Unit)",
        platform_year=None,
        entered_from=2016,
        entered_to=2016,
        entered="2016",
        entered_zh="2016",
        note="A dedicated deep-learning accelerator for training and inference; not a general-purpose GPU, "
        "but it greatly raised the efficiency of large-scale training",
        note_zh="专用深度学习加速器，面向训练和推理，非通用 GPU，但极大提升大规模训练效率",
    ),
    VendorRow(
        vendor="FPGA vendors",
        vendor_zh="FPGA 厂商",
        platform="OpenCL / custom acceleration",
        platform_zh="OpenCL / 自定义加速",
        platform_year=None,
        entered_from=2012,
        entered_to=2015,
        entered="2012–2015",
        entered_zh="2012–2015",
        note="Used for experimental neural-network acceleration; flexible but complex to develop for, "
        "with an immature ecosystem",
        note_zh="用于实验性神经网络加速，灵活但开发复杂，生态不成熟",
    ),
)

MILESTONES: tuple[MilestoneRow, ...] = (
    MilestoneRow(
        year=1986,
        event="Rumelhart et al. systematically present the error-backpropagation training algorithm "
        "for multi-layer feed-forward neural networks",
        event_zh="Rumelhart 等人系统化提出“多层前馈神经网络的误差反向传播训练算法”",
        note="and show that it works on real tasks, which made backpropagation the core method "
        "of neural-network training",
        note_zh="并演示它在实际任务中有效，才让反向传播真正成为神经网络训练的核心方法",
    ),
    MilestoneRow(
        year=2006,
        event="Deep belief networks proposed",
        event_zh="深度信念网络提出",
        note="Hinton et al.; drove the revival of deep learning",
        note_zh="Hinton 等人，推动深度学习复兴",
    ),
    MilestoneRow(
        year=2007,
        event="CUDA platform released",
        event_zh="CUDA 平台发布",
        note="NVIDIA opens up the GPU's parallel computing power",
        note_zh="NVIDIA 开放 GPU 并行计算能力",
    ),
    MilestoneRow(
        year=2009,
        event="Deep learning begins training on GPUs",
        event_zh="深度学习开始用 GPU 训练",
        note="Hinton's team trains on MNIST and ImageNet subsets",
        note_zh="Hinton 团队训练 MNIST、ImageNet 子集",
    ),
    MilestoneRow(
        year=2012,
        event="AlexNet wins the ImageNet challenge",
        event_zh="AlexNet 获 ImageNet 冠军",
        note="A CNN trained on NVIDIA GPUs; the GPU becomes the standard for deep-learning training",
        note_zh="使用 NVIDIA GPU 训练 CNN，GPU 成为深度学习训练标准",
    ),
)


def vendor_rows() -> list[dict[str, Any]]:
    """The vendor table as rows for `timeline_vendors`, positions from 1 in the seed's order."""
    return [row.as_row(position) for position, row in enumerate(VENDORS, start=1)]


def milestone_rows() -> list[dict[str, Any]]:
    """The milestones as rows for `timeline_milestones`, positions from 1 in the seed's order."""
    return [row.as_row(position) for position, row in enumerate(MILESTONES, start=1)]
