"""Provider discovery and the selection errors of the provider contract.

Fake distributions are real ``*.dist-info`` folders on ``sys.path``, found by
``importlib.metadata`` exactly as pip-installed ones are.
"""

from __future__ import annotations

import textwrap

import pytest
from flambe_cluster import ProviderError, plugins
from flambe_cluster.config import parse_config

COMPLETE_PROVIDER = """
    from flambe_cluster.provider import config_class, hookimpl

    @config_class
    class Options:
        pass

    @hookimpl
    def flambe_cluster_options_class():
        return Options

    @hookimpl
    def flambe_cluster_validate(config):
        return []

    @hookimpl
    def flambe_cluster_load_instances(config, journal):
        raise NotImplementedError

    @hookimpl
    def flambe_cluster_find_instances(config):
        return None
"""


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install a fake distribution: fake_dist(dist_name, {provider: module_source})."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, providers: dict[str, str], version: str = "1.0", requires: tuple[str, ...] = ()) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        requirements = "".join(f"Requires-Dist: {line}\n" for line in requires)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n{requirements}")
        lines = ["[flambe_cluster.providers]"]
        for name, source in providers.items():
            module = f"{dist.replace('-', '_')}_{name}"
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{name} = {module}")
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")

    return install


def test_builtin_ssh_provider_is_listed_without_import():
    names = {(p.name, p.distribution) for p in plugins.installed_providers()}
    assert ("ssh", "flambe-cluster") in names


def test_unknown_provider_lists_installed_ones_and_suggests():
    with pytest.raises(ProviderError) as caught:
        plugins.load_provider("shh")
    message = str(caught.value)
    assert "unknown provider 'shh'" in message
    assert "ssh" in message and "Did you mean 'ssh'?" in message


def test_a_complete_fake_provider_loads(fake_dist):
    fake_dist("acme-cloud", {"acme": COMPLETE_PROVIDER})
    provider = plugins.load_provider("acme")
    assert provider.flambe_cluster_find_instances(config=None) is None
    assert ("acme", "acme-cloud", "1.0") in {(p.name, p.distribution, p.version) for p in plugins.installed_providers()}


def test_name_claimed_by_two_distributions(fake_dist):
    fake_dist("acme-one", {"twin": COMPLETE_PROVIDER})
    fake_dist("acme-two", {"twin": COMPLETE_PROVIDER})
    with pytest.raises(ProviderError) as caught:
        plugins.load_provider("twin")
    message = str(caught.value)
    assert "claimed by several distributions" in message
    assert "acme-one" in message and "acme-two" in message
    assert "pip uninstall" in message


def test_unknown_hook_suggests_the_closest_name(fake_dist):
    fake_dist("acme-typo", {"typo": COMPLETE_PROVIDER + """
    @hookimpl
    def flambe_cluster_load_instance(config, journal):
        pass
"""})
    with pytest.raises(ProviderError) as caught:
        plugins.load_provider("typo")
    message = str(caught.value)
    assert "unknown hook(s) 'flambe_cluster_load_instance'" in message
    assert "did you mean 'flambe_cluster_load_instances'?" in message


def test_missing_required_hook(fake_dist):
    fake_dist("acme-half", {"half": """
        from flambe_cluster import hookimpl

        @hookimpl
        def flambe_cluster_options_class():
            return object
    """})
    with pytest.raises(ProviderError) as caught:
        plugins.load_provider("half")
    message = str(caught.value)
    assert "lacks required hook(s)" in message
    for hook in ("flambe_cluster_validate", "flambe_cluster_load_instances", "flambe_cluster_find_instances"):
        assert hook in message


def test_missing_extra_names_module_and_install_command(fake_dist):
    fake_dist("acme-sdk", {"sdk": "    import acme_cloud_sdk_that_is_not_installed\n" + COMPLETE_PROVIDER})
    with pytest.raises(ProviderError) as caught:
        plugins.load_provider("sdk")
    message = str(caught.value)
    assert "cannot be imported" in message
    assert "acme_cloud_sdk_that_is_not_installed" in message
    assert "pip install --force-reinstall acme-sdk" in message


def test_a_provider_missing_its_extra_is_refused_in_one_line_without_importing_it(fake_dist):
    fake_dist("acme", {"cloud": "raise RuntimeError('imported')\n", "plain": COMPLETE_PROVIDER},
              requires=('acme-sdk-that-is-not-installed>=2; extra == "cloud"', "pluggy>=1",
                        'nothing-else; extra == "other"'))
    (cloud,) = [i for i in plugins.installed_providers() if i.name == "cloud"]
    (plain,) = [i for i in plugins.installed_providers() if i.name == "plain"]
    assert plugins.missing_requirements(cloud) == ["acme-sdk-that-is-not-installed"]
    assert plugins.missing_requirements(plain) == []
    with pytest.raises(ProviderError) as caught:
        plugins.load_provider("cloud")
    message = str(caught.value)
    assert "\n" not in message and "acme-sdk-that-is-not-installed" in message
    assert "pip install --force-reinstall acme" in message
    plugins.load_provider("plain")


def test_builtin_providers_are_ready_with_the_dev_install():
    assert all(not plugins.missing_requirements(info) for info in plugins.installed_providers()
               if info.distribution == plugins.DISTRIBUTION)


def test_missing_extra_of_a_builtin_provider_names_the_extra():
    info = plugins.ProviderInfo("aws", "flambe_cluster_aws", plugins.DISTRIBUTION, "0.1.0")
    assert plugins.install_hint(info, "boto3") == "install its extra: pip install 'flambe-cluster[aws]'"


def test_unknown_provider_in_a_config_is_a_provider_error(tmp_path):
    with pytest.raises(ProviderError, match="unknown provider 'nope'"):
        parse_config({"provider": "nope", "name": "x"})


def test_a_cluster_from_yaml_builds_exactly_one_plugin_manager(tmp_path, monkeypatch):
    from flambe_cluster import Cluster

    made = []
    real = plugins.make_plugin_manager
    monkeypatch.setattr(plugins, "make_plugin_manager", lambda name: made.append(name) or real(name))
    key = tmp_path / "id"
    key.write_text("not read here\n")
    key.chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text(f"!SSHCluster\nname: one\nkey: {key}\nusername: u\norchestrator_ip: 10.0.0.1\n"
                    "factories_ips: [10.0.0.2]\n")
    cluster = Cluster.from_yaml(path)
    assert made == ["ssh"]
    assert cluster.hooks.options_class() is cluster.config.options.__class__
    assert type(cluster).__name__ == "SSHCluster", "the !SSHCluster tag builds the seed's class"


def test_an_options_class_not_declared_with_config_class_is_refused(fake_dist):
    fake_dist("acme-plain", {"plain": COMPLETE_PROVIDER.replace("@config_class", "@__import__('attrs').frozen")})
    with pytest.raises(ProviderError, match=r"provider 'plain'.*Options.*flambe_cluster.provider.config_class"):
        plugins.make_plugin_manager("plain")
