"""Drain slots: at most ``max_drained`` nodes of the group drained at once per service.

Keys, bound to the node's lease (a dead node frees its slot and its place)::

    <key_prefix><group>/slots/<service>/<node>   a slot held (JSON: reason, since, forced)
    <key_prefix><group>/queue/<service>/<node>   waiting for one; the order is etcd's
                                                 create_revision of these keys

Taking a slot is one transaction that succeeds only if no slot key under the service
was created or changed since the read (a compare over the whole range), so two nodes
seeing one free slot cannot both take it; the loser reads again. Blocking calls: the
fleet thread's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from announcer.fleet.etcd import (
    EtcdClient,
    EtcdError,
    KeyValue,
    Uncertain,
    delete_op,
    nothing_new_under,
    put_op,
)
from announcer.fleet.records import Keys

ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class SlotAnswer:
    granted: bool | None
    """True: this node holds a slot; False: none free (waiting, or refused without a
    queue); None: etcd could not be reached."""
    holders: tuple[str, ...] = ()
    """The other nodes holding the service's slots."""
    ahead: int = 0
    """Nodes waiting before this one."""
    forced: bool = False
    why: str = ""


def slots_root(keys: Keys, service: str) -> str:
    return f"{keys.group_root}slots/{service}/"


def queue_root(keys: Keys, service: str) -> str:
    return f"{keys.group_root}queue/{service}/"


def _node(kv: KeyValue, root: str) -> str:
    return kv.key[len(root) :]


class Slots:
    def __init__(self, client: EtcdClient, keys: Keys, node: str) -> None:
        self.client, self.keys, self.node = client, keys, node

    def take(
        self, service: str, reason: str, maximum: int, lease: int, *, force: bool, queue: bool
    ) -> SlotAnswer:
        """Take a slot, or join the queue (``queue``), or take one anyway (``force``).
        Never raises."""
        try:
            return self._take(service, reason, maximum, lease, force=force, queue=queue)
        except EtcdError as err:
            return SlotAnswer(None, why=str(err))

    def _take(
        self, service: str, reason: str, maximum: int, lease: int, *, force: bool, queue: bool
    ) -> SlotAnswer:
        sroot, qroot = slots_root(self.keys, service), queue_root(self.keys, service)
        mine, my_place = sroot + self.node, qroot + self.node
        value = json.dumps({"reason": reason, "since": time.time(), "forced": force}).encode()
        answer = SlotAnswer(False)
        for _ in range(ATTEMPTS):
            held, revision = self.client.range(sroot, prefix=True)
            holders = tuple(_node(kv, sroot) for kv in held if kv.key != mine)
            if any(kv.key == mine for kv in held):
                return SlotAnswer(True, holders)
            if force:
                self.client.txn_ops([], [put_op(mine, value, lease), delete_op(my_place)])
                return SlotAnswer(True, holders, forced=True)
            waiting, _ = self.client.range(qroot, prefix=True)
            order = sorted(waiting, key=lambda kv: kv.create_revision)
            ahead = next((i for i, kv in enumerate(order) if kv.key == my_place), len(order))
            answer = SlotAnswer(False, holders, ahead)
            if len(holders) >= maximum or ahead >= maximum - len(holders):
                if queue and ahead == len(order):  # not queued yet: take a place
                    self.client.put(my_place, value, lease)
                return answer
            compare = [nothing_new_under(sroot, revision)]
            try:
                ok = self.client.txn_ops(
                    compare, [put_op(mine, value, lease), delete_op(my_place)]
                ).succeeded
            except Uncertain:
                ok = self.client.get(mine) is not None  # read back, never resend
            if ok:
                return SlotAnswer(True, holders)
        return answer

    def release(self, service: str) -> None:
        """Give back this node's slot and its place in the queue. Raises EtcdError."""
        for root in (slots_root(self.keys, service), queue_root(self.keys, service)):
            self.client.delete(root + self.node)

    def holders(self) -> dict[str, list[str]]:
        """Every service's slot holders (this node included). Raises EtcdError."""
        kvs, _ = self.client.range(f"{self.keys.group_root}slots/", prefix=True)
        return holders_of(self.keys, kvs)


def holders_of(keys: Keys, kvs: Iterable[KeyValue]) -> dict[str, list[str]]:
    """service -> the nodes holding its drain slots, from the group's keys (others are
    skipped), in key order."""
    root = f"{keys.group_root}slots/"
    out: dict[str, list[str]] = {}
    for kv in sorted(kvs, key=lambda kv: kv.key):
        if kv.key.startswith(root):
            service, _, node = kv.key[len(root) :].partition("/")
            out.setdefault(service, []).append(node)
    return out
