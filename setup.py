"""Map the repository's part folders onto the ``ferry.*`` import namespace.

The top level shows the architecture (``protocol/``, ``server/``, ``agent/``…),
while the import names stay under one distribution namespace (``ferry.protocol``…),
so nothing installs a bare generic name such as ``server`` into site-packages.
"""

from setuptools import find_packages, setup

PARTS = ("protocol", "server", "agent", "client", "cli")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for part in PARTS:
        package_dir[f"ferry.{part}"] = part
        packages.append(f"ferry.{part}")
        packages += [f"ferry.{part}.{sub}" for sub in find_packages(part)]
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
