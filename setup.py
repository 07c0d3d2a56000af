"""Build script. Metadata and dependencies live in setup.cfg; this file only adds the top-level bundles/ and
data_manifests/ folders to the package as ``medtransfer._bundles`` and ``medtransfer._manifests`` (package data
of a regular ``pip install .``; a checkout or editable install reads the folders in place, see
``medtransfer.registry``). setup.cfg cannot combine ``packages = find:`` with extra, remapped packages."""

from setuptools import find_packages, setup

DATA_PACKAGES = {"medtransfer._bundles": "bundles", "medtransfer._manifests": "data_manifests"}

setup(
    packages=find_packages(include=["medtransfer", "medtransfer.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
)
