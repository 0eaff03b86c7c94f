"""What pyproject.toml cannot say: the Alembic migrations ship inside the package.

The migrations live in ``migrations/`` at the root of the repository, where developers run
``alembic`` by hand and where each kind of log adds its branch. A wheel installs that directory
as ``openred/store/migrations`` (the package ``openred.store.migrations``), where
``openred/store/migrate.py`` finds it, so an installed OpenRed opens and migrates a store without
a source tree (tests/test_packaging.py builds and installs a wheel to prove it).
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["openred*", "crypto_jail*", "audit_tools*"]),
        "openred.store.migrations",
        "openred.store.migrations.versions",
    ],
    package_dir={"openred.store.migrations": "migrations"},
    package_data={"openred.store.migrations": ["script.py.mako"]},
)
