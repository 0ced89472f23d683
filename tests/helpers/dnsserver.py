"""A small authoritative DNS server on 127.0.0.1 for tests, built on dnspython.

Answers from a dict of records; names not in it are NXDOMAIN, names in ``servfail``
get SERVFAIL, names in ``silent`` get no answer at all (a timeout).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class Zone:
    records: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> [(type, rdata)]
    servfail: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, rdtype: str, text: str) -> None:
        self.records.setdefault(name.lower().rstrip("."), []).append((rdtype, text))

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            texts = [text for t, text in self.records[name] if t == rdtype]
            if texts:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, question.rdtype, texts)
                )
        return response.to_wire()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone):
        self.zone = zone

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            reply = self.zone.answer(data)
        except Exception:  # a test server must not die on an odd query
            return
        if reply is not None:
            self.transport.sendto(reply, addr)


async def start(zone: Zone) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(zone), local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]
