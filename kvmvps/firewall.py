"""Port-forwarding rules in iptables: computed from data, written atomically.

kvmvps owns three chains, named from a prefix (``KVMVPS`` by default):

- ``PREFIX-DNAT`` (nat), jumped to from PREROUTING and OUTPUT: public
  address and port -> guest address and port, for traffic from outside, from
  guests and from the host itself;
- ``PREFIX-POST`` (nat), jumped to from POSTROUTING: masquerades forwarded
  connections from a guest subnet to a guest of the same subnet (hairpin), so
  that the answer comes back through the host;
- ``PREFIX-FWD`` (filter), jumped to from FORWARD at position 1, ahead of
  libvirt's reject rules: accepts the forwarded connections.

Nothing else in iptables is touched but those four jump rules. The whole
state is computed by :func:`desired`, compared with what :func:`read_state`
finds, and written by :func:`apply` in one ``iptables-restore --noflush``.
iptables-restore commits each table on its own, so when one fails after
another was committed, :func:`apply` puts the previous state back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvmvps.errors import FirewallError

TABLES = ("nat", "filter")
# (table, chain suffix); and the jumps: (table, built-in chain, chain suffix)
CHAINS = (("nat", "DNAT"), ("nat", "POST"), ("filter", "FWD"))
JUMPS = (
    ("nat", "PREROUTING", "DNAT"),
    ("nat", "OUTPUT", "DNAT"),
    ("nat", "POSTROUTING", "POST"),
    ("filter", "FORWARD", "FWD"),
)
TIMEOUT = 30


@dataclass(frozen=True)
class PortForward:
    """One forward, as the rules need it."""

    protocol: str
    public_address: str
    public_port: int
    guest_ip: str
    guest_port: int
    bridge: str
    subnet: str
    tag: str  # a comment that names the VPS; letters, digits, ':' and '-' only


@dataclass(frozen=True)
class State:
    """Our chains' rules (a chain missing from ``chains`` does not exist) and our jumps.

    ``jumps`` maps (table, built-in chain, our chain) to the 1-based positions
    of the jump rules in the built-in chain; the wanted state is ``(1,)``.
    """

    chains: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    jumps: dict[tuple[str, str, str], tuple[int, ...]] = field(default_factory=dict)


def chain_names(prefix: str) -> dict[str, str]:
    """Suffix -> chain name, e.g. ``{"DNAT": "KVMVPS-DNAT", ...}``."""
    return {suffix: f"{prefix}-{suffix}" for _table, suffix in CHAINS}


# -- the rules: pure functions -----------------------------------------------
def forward_rules(prefix: str, fw: PortForward) -> dict[str, str]:
    """The three rules of one forward, by chain suffix, as ``iptables -S`` prints them."""
    c = chain_names(prefix)
    match = f"-p {fw.protocol} -m {fw.protocol} --dport"
    note = f'-m comment --comment "{fw.tag}"'
    guest = f"-d {fw.guest_ip}/32 -o {fw.bridge}"
    return {
        "DNAT": f"-A {c['DNAT']} -d {fw.public_address}/32 {match} {fw.public_port} {note} "
        f"-j DNAT --to-destination {fw.guest_ip}:{fw.guest_port}",
        "POST": f"-A {c['POST']} -s {fw.subnet} {guest} {match} {fw.guest_port} "
        f"-m conntrack --ctstate DNAT {note} -j MASQUERADE",
        "FWD": f"-A {c['FWD']} {guest} {match} {fw.guest_port} "
        f"-m conntrack --ctstate DNAT {note} -j ACCEPT",
    }


def desired(prefix: str, forwards: Iterable[PortForward]) -> State:
    """The state our chains should have for these forwards (sorted, so stable)."""
    rules: dict[str, list[str]] = {suffix: [] for _t, suffix in CHAINS}
    ordered = sorted(forwards, key=lambda f: (f.public_address, f.protocol, f.public_port))
    for fw in ordered:
        for suffix, rule in forward_rules(prefix, fw).items():
            rules[suffix].append(rule)
    names = chain_names(prefix)
    return State(
        chains={(table, names[suffix]): tuple(rules[suffix]) for table, suffix in CHAINS},
        jumps={(table, parent, names[suffix]): (1,) for table, parent, suffix in JUMPS},
    )


ABSENT = State()  # none of our chains and jumps: what :func:`remove` leaves


def restore_text(prefix: str, current: State, target: State) -> str:
    """The ``iptables-restore --noflush`` input that turns ``current`` into ``target``."""
    names = chain_names(prefix)
    out: list[str] = []
    for table in TABLES:
        if _same_table(table, current, target):
            continue  # a table that is right already is left alone
        ours = [names[suffix] for t, suffix in CHAINS if t == table]
        kept = [c for c in ours if (table, c) in target.chains]
        dropped = [c for c in ours if (table, c) in current.chains and c not in kept]
        lines = [f":{chain} - [0:0]" for chain in kept]
        inserts = []
        for t, parent, suffix in JUMPS:
            key = (t, parent, names[suffix])
            have, want = current.jumps.get(key, ()), target.jumps.get(key, ())
            if t != table or have == want:
                continue
            lines += [f"-D {parent} -j {names[suffix]}"] * len(have)
            inserts += [f"-I {parent} {pos} -j {names[suffix]}" for pos in want]
        lines += [f"{op} {chain}" for chain in dropped for op in ("-F", "-X")]
        for chain in kept:
            lines += target.chains[(table, chain)]
        lines += inserts
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def _same_table(table: str, a: State, b: State) -> bool:
    chains = {key for key in (*a.chains, *b.chains) if key[0] == table}
    jumps = {key for key in (*a.jumps, *b.jumps) if key[0] == table}
    return all(a.chains.get(k) == b.chains.get(k) for k in chains) and all(
        a.jumps.get(k) == b.jumps.get(k) for k in jumps
    )


# -- iptables itself ----------------------------------------------------------
@dataclass(frozen=True)
class Iptables:
    """How to run iptables here: ``prefix`` wraps each command (e.g. ``ip netns exec NS``)."""

    prefix: tuple[str, ...] = ()
    iptables: str = "iptables"
    restore: str = "iptables-restore"

    def run(
        self, args: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.prefix, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallError(f"cannot run {args[0]}: {exc}") from None

    def table(self, table: str) -> list[str]:
        """``iptables -S`` of a whole table: its ``-N`` and ``-A`` lines."""
        done = self.run([self.iptables, "-w", "-t", table, "-S"])
        if done.returncode != 0:
            raise FirewallError(f"iptables -t {table} -S failed: {_first(done.stderr)}")
        return [ln for ln in done.stdout.splitlines() if ln.startswith(("-N ", "-A "))]

    def restore_noflush(self, text: str) -> str | None:
        """Run iptables-restore --noflush; the error's first line, or None."""
        done = self.run([self.restore, "-w", "--noflush"], stdin=text)
        if done.returncode == 0:
            return None
        return _first(done.stderr) or f"exit status {done.returncode}"


def _first(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = " ".join(ln for ln in lines[1:] if ln.startswith(("line", "Error occurred")))
    return " ".join(filter(None, [lines[0] if lines else "", detail]))


def read_state(ipt: Iptables, prefix: str) -> State:
    """Our chains and jumps as iptables has them now (one ``iptables -S`` per table)."""
    names = chain_names(prefix)
    chains: dict[tuple[str, str], tuple[str, ...]] = {}
    jumps: dict[tuple[str, str, str], tuple[int, ...]] = {}
    for table in TABLES:
        lines = ipt.table(table)
        for t, suffix in CHAINS:
            chain = names[suffix]
            if t == table and f"-N {chain}" in lines:
                chains[(table, chain)] = tuple(ln for ln in lines if ln.startswith(f"-A {chain} "))
        for t, parent, suffix in JUMPS:
            if t != table:
                continue
            rules = [ln for ln in lines if ln.startswith(f"-A {parent} ")]
            jump = f"-A {parent} -j {names[suffix]}"
            positions = tuple(i + 1 for i, rule in enumerate(rules) if rule == jump)
            if positions:
                jumps[(table, parent, names[suffix])] = positions
    return State(chains=chains, jumps=jumps)


def apply(ipt: Iptables, prefix: str, target: State) -> bool:
    """Bring our chains to ``target``; False when they were there already.

    Raises :class:`FirewallError` when iptables-restore fails; then the rules
    are as they were before (a table it had already committed is put back).
    """
    before = read_state(ipt, prefix)
    if before == target:
        return False
    error = ipt.restore_noflush(restore_text(prefix, before, target))
    if error is None:
        return True
    rollback = _roll_back(ipt, prefix, before)
    raise FirewallError(f"iptables-restore failed: {error}; {rollback}")


def _roll_back(ipt: Iptables, prefix: str, before: State) -> str:
    now = read_state(ipt, prefix)
    if now == before:
        return "nothing was changed"
    error = ipt.restore_noflush(restore_text(prefix, now, before))
    if error is None:
        return "the rules were put back as they were"
    return f"putting the rules back failed too: {error}"


def remove(ipt: Iptables, prefix: str) -> bool:
    """Delete our jumps and chains; False when there were none."""
    return apply(ipt, prefix, ABSENT)
