"""A domain's interfaces are read from their own <interface> elements, not a parse of the
whole document: the result must be the whole document's, whatever else the XML holds."""

from __future__ import annotations

from lxml import etree

from kvmvps.hvtypes import NicState, nic_states

DOMAIN = """<domain type='qemu'>
  <name>kvmvps-0123456789ab</name>
  <metadata>
    <other:tool xmlns:other="urn:example:other"><interface xmlns="urn:example:other">
      <mac address='52:54:00:00:00:99'/></interface></other:tool>
  </metadata>
  <description>an &lt;interface&gt; in text</description>
  <devices>
    <disk type='volume' device='disk'><target dev='vda' bus='virtio'/></disk>
    <interface type='network'>
      <mac address='52:54:00:99:6c:10'/>
      <source network='kvmvps'/>
      <port isolated='yes'/>
      <link state='down'/>
      <filterref filter='kvmvps-clean-traffic-open-ipv6'>
        <parameter name='MAC' value='52:54:00:99:6c:10'/>
        <parameter name='IP' value='10.64.0.2'/>
        <parameter name='IPV6' value='fd79:278:146:f34::2'/>
      </filterref>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:00:00:02'/>
      <source bridge='br0'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>
"""


def _whole_document(xml: str) -> list[NicState]:
    """The reference: every devices/interface of the parsed document."""
    nics = []
    for nic in etree.fromstring(xml.encode()).iterfind("devices/interface"):
        ref, mac = nic.find("filterref"), nic.find("mac")
        params = () if ref is None else ref.iterfind("parameter")
        nics.append(
            NicState(
                mac="" if mac is None else mac.get("address", ""),
                filter=None if ref is None else ref.get("filter"),
                parameters=tuple(sorted((p.get("name", ""), p.get("value", "")) for p in params)),
                isolated=nic.find("port[@isolated='yes']") is not None,
                link_down=nic.find("link[@state='down']") is not None,
            )
        )
    return nics


def test_interfaces_equal_the_whole_documents() -> None:
    nics = nic_states(DOMAIN)
    assert nics == _whole_document(DOMAIN)
    first, second = nics  # not the metadata's element of the same name
    assert first.mac == "52:54:00:99:6c:10" and first.isolated and first.link_down
    assert first.filter == "kvmvps-clean-traffic-open-ipv6"
    assert dict(first.parameters)["IPV6"] == "fd79:278:146:f34::2"
    assert second == NicState(
        mac="52:54:00:00:00:02", filter=None, parameters=(), isolated=False, link_down=False
    )


def test_a_document_in_another_layout_is_parsed_whole() -> None:
    """No "<devices>" as libvirt writes it (attributes on it): the whole document is read."""
    odd = DOMAIN.replace("<devices>", "<devices  >")
    assert nic_states(odd) == _whole_document(odd) == nic_states(DOMAIN)
    assert nic_states("<domain><devices/></domain>") == []
