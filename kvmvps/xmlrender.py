"""Render specs through Jinja2 and validate them against libvirt's RelaxNG schemas.

Autoescape is on and undefined values are errors, so user text can neither
break the XML nor slip in elements. Every document is parsed with lxml and
validated before anything hands it to libvirt.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import domain_templates
import network_xml
from kvmvps.errors import XmlValidationError

if TYPE_CHECKING:
    import jinja2
    from lxml import etree

# Jinja2 and lxml are imported by the first render or validation, not with this
# module: the CLI's read-only commands import it (through the services) and
# never render (speed, not cycles).
from kvmvps.xmlspec import (
    BackupSpec,
    BridgeNetworkSpec,
    DhcpHost,
    DomainSpec,
    NatNetworkSpec,
    NwFilterSpec,
    OverlayVolumeSpec,
    RawVolumeSpec,
    SnapshotSpec,
)

DEFAULT_SCHEMA_DIR = Path("/usr/share/libvirt/schemas")


def schema_dir() -> Path:
    return Path(os.environ.get("KVMVPS_SCHEMA_DIR", DEFAULT_SCHEMA_DIR))


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    paths = [m.__path__[0] for m in (domain_templates, network_xml)]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


@cache
def _schema(name: str) -> etree.RelaxNG:
    from lxml import etree

    path = schema_dir() / f"{name}.rng"
    if not path.is_file():
        raise XmlValidationError(
            f"libvirt's RelaxNG schema {path} is missing (install the libvirt0 package)"
        )
    return etree.RelaxNG(etree.parse(str(path)))


def validate(xml: str, schema: str) -> etree._Element:
    """Parse ``xml`` and validate it against ``schema`` (e.g. ``domain``)."""
    from lxml import etree

    try:
        root = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as exc:
        raise XmlValidationError(f"rendered {schema} XML is not well-formed: {exc}") from None
    rng = _schema(schema)
    if not rng.validate(root):
        err = rng.error_log.last_error
        raise XmlValidationError(f"rendered {schema} XML fails libvirt's schema: {err}")
    return root


def render(template: str, schema: str, **values: Any) -> str:
    """Render ``template`` with ``values`` and validate it against ``schema``."""
    xml = _environment().get_template(template).render(**values)
    validate(xml, schema)
    return xml


def domain_xml(spec: DomainSpec) -> str:
    return render("domain.xml.j2", "domain", spec=spec)


def interface_xml(spec: DomainSpec, mac: str) -> str:
    """The ``<interface>`` of ``mac`` in the domain of ``spec``, for a device update.

    The whole domain is rendered and validated; the fragment is cut from it.
    """
    from lxml import etree

    root = etree.fromstring(domain_xml(spec).encode())
    for nic in root.iterfind("devices/interface"):
        mac_el = nic.find("mac")
        if mac_el is not None and mac_el.get("address") == mac:
            return etree.tostring(nic, encoding="unicode").strip()
    raise XmlValidationError(f"the domain {spec.name} has no interface with MAC {mac}")


def nat_network_xml(spec: NatNetworkSpec) -> str:
    return render("nat.xml.j2", "network", spec=spec)


def bridge_network_xml(spec: BridgeNetworkSpec) -> str:
    return render("bridge.xml.j2", "network", spec=spec)


def nwfilter_xml(spec: NwFilterSpec) -> str:
    return render("nwfilter.xml.j2", "nwfilter", spec=spec)


def overlay_volume_xml(spec: OverlayVolumeSpec) -> str:
    return render("volume.xml.j2", "storagevol", spec=spec)


def raw_volume_xml(spec: RawVolumeSpec) -> str:
    return render("raw_volume.xml.j2", "storagevol", spec=spec)


def backup_xml(spec: BackupSpec) -> str:
    return render("backup.xml.j2", "domainbackup", spec=spec)


def snapshot_xml(spec: SnapshotSpec) -> str:
    return render("snapshot.xml.j2", "domainsnapshot", spec=spec)


def pool_xml(name: str, path: str) -> str:
    return render("pool.xml.j2", "storagepool", name=name, path=path)


def dhcp_host_xml(host: DhcpHost) -> str:
    """A ``<host>`` fragment for virNetworkUpdate, validated inside a whole network."""
    fragment = _environment().get_template("dhcp_host.xml.j2").render(host=host).strip()
    probe = NatNetworkSpec(
        name="probe", bridge="probe0", address="10.0.0.1", netmask="255.0.0.0", dhcp_hosts=(host,)
    )
    nat_network_xml(probe)
    return fragment
