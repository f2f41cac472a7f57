"""lrtech: differential learning rates and SGDR for TensorFlow.

Install (CPU machines, no GPU build downloaded):   pip install -e ".[cpu]"
Install (one or more NVIDIA GPUs):                 pip install -e ".[gpu]"
Extras: test (pytest, ruff), plots (matplotlib), data (scikit-learn). See BUILD.md.
Installs the `lrtech` command (trainer/tools/lrtech.py).
"""

import setuptools

TF = "2.21.*"

setuptools.setup(
    name="lrtech",
    version="0.1.0",
    description="Differential learning rates and SGDR for TensorFlow / Keras 3.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=[
            "trainer",
            "trainer.*",
            "schedules",
            "schedules.*",
            "models",
            "models.*",
            "configs",
        ]
    ),
    py_modules=["run_train"],
    # The shipped pretrained weights (models/pretrained/README.md) and flagfiles
    # (`--flagfile=NAME` finds configs/NAME.flags from any directory).
    package_data={
        "models": ["pretrained/*.weights.h5", "pretrained/README.md"],
        "configs": ["*.flags"],
    },
    # `lrtech train|lr-find|layers|predict|evaluate|ensemble`; run_train.py stays the entry
    # point of the source tree.
    entry_points={"console_scripts": ["lrtech = trainer.tools.lrtech:main"]},
    # TensorFlow itself comes from an extra: `tensorflow` pulls the CUDA build, which a CPU
    # machine should not download; `tensorflow-cpu` is the same API without it.
    install_requires=[
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        # tf.summary.scalar/image and the HParams API live here; TF 2.21 no longer installs it.
        f"tensorboard=={TF}",
        "numpy>=1.26",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF}"],
        "gpu": [f"tensorflow[and-cuda]=={TF}"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "scikit-learn>=1.3"],
        # --dataset=sklearn_digits: real 8x8 digit scans shipped inside the scikit-learn wheel.
        "data": ["scikit-learn>=1.3"],
        "plots": ["matplotlib>=3.7"],
    },
)
