"""Telling scanners from people (newsletter.scanners): user agents, and the network a client is in, judged
against the standard library's ipaddress; the list the docs give is the list the code uses."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.scanners import SCANNER_AGENTS, AgentFilter, network
from tests.conftest import ROOT

PEOPLE = {
    "Chrome on Linux": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
                       "Safari/537.36",
    "Safari on an iPhone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
                           "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Firefox on Windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
            "Safari/537.36 Edg/124.0.2478.51",
    "a phone whose name ends in bot": "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like "
                                      "Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Gmail's in-app browser": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
                              "like Gecko) GSA/310.0.621847700 Mobile/15E148 Safari/604.1",
}
MACHINES = {
    "Gmail's image proxy": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Apple's privacy proxy": "Mozilla/5.0",
    "Outlook checking a link": "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
    "Bing's preview": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "BingPreview/1.0b",
    "Barracuda": "Mozilla/5.0 (compatible; Barracuda Sentinel)",
    "Slack's unfurler": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Facebook's preview": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "headless Chromium": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 "
                         "Safari/537.36",
    "curl": "curl/8.5.0",
    "python-requests": "python-requests/2.31.0",
    "no agent at all": "",
}


@pytest.mark.parametrize("agent", PEOPLE.values(), ids=PEOPLE.keys())
def test_browsers_people_use_are_not_scanners(agent):
    assert not AgentFilter().is_scanner(agent)


@pytest.mark.parametrize("agent", MACHINES.values(), ids=MACHINES.keys())
def test_proxies_gateways_previewers_and_libraries_are(agent):
    assert AgentFilter().is_scanner(agent)


def test_more_patterns_from_the_config_extend_the_list():
    gateway = "Mozilla/5.0 ExampleGateway/3 (link check)"
    assert not AgentFilter().is_scanner(gateway)
    assert AgentFilter([r"examplegateway/\d"]).is_scanner(gateway)  # any case
    assert not AgentFilter([r"examplegateway/\d"]).is_scanner(PEOPLE["Chrome on Linux"])


def _reference(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@given(st.ip_addresses())
def test_the_network_of_an_address_is_its_slash_24_or_slash_48(address):
    assert network(str(address)) == _reference(str(address))


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_mapped_into_ipv6_is_in_its_ipv4_network(address):
    assert network(f"::ffff:{address}") == network(str(address)) == _reference(str(address))


def test_what_is_no_address_is_a_network_of_its_own():
    assert network(None) == "unknown"
    assert network("testclient") == "testclient"


def test_the_docs_list_exactly_the_patterns_the_code_uses():
    docs = (ROOT / "docs" / "engagement.md").read_text(encoding="utf-8")
    listed = docs[docs.index("<!-- scanner agents -->"):docs.index("<!-- end of scanner agents -->")]
    assert re.findall(r"`([^`]+)`", listed) == list(SCANNER_AGENTS)
