"""Drives the emulator's application mode with the official Bitrix24 Python
SDK (b24pysdk): the SDK parses the install payload, calls REST with the
application's OAuth tokens, registers an automation rule, parses a rule run
and an application event, answers with bizproc.event.send, and refreshes
expired tokens at the (emulated) authorization server.

Usage: app_compat.py DOMAIN ADMIN_BASE_URL CLIENT_ID CLIENT_SECRET INSTALL_BODY_FILE HANDLER_BASE_URL
(REQUESTS_CA_BUNDLE must point at the emulator's certificate.)
"""

import sys
import time
from urllib.parse import parse_qsl

import requests
from b24pysdk import Client, errors
from b24pysdk.api.requesters.bitrix_oauth_requester import BitrixOAuthRequester
from b24pysdk.credentials import BitrixAppLocal, BitrixTokenLocal, OAuthEventData, OAuthWorkflowData
from b24pysdk.errors.oauth import BitrixOAuthInvalidGrant

domain, admin_base, client_id, client_secret, install_file, handler_base = sys.argv[1:7]
# The SDK's authorization server is a class constant; point it at the emulator.
BitrixOAuthRequester._OAUTH_TOKEN_URL = f"{admin_base}/oauth/token/"
session = requests.Session()


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print("ok:", message)


def admin(method, path, **kwargs):
    response = session.request(method, f"{admin_base}/_emulator/{path}", **kwargs)
    response.raise_for_status()
    return response.json()


def delivery(kind, count):
    for _ in range(250):
        found = [d for d in admin("GET", "deliveries") if d["kind"] == kind]
        if len(found) >= count:
            return found[count - 1]
        time.sleep(0.02)
    raise AssertionError(f"no {kind} delivery")


with open(install_file, encoding="utf-8") as body:
    install = OAuthEventData.from_dict(dict(parse_qsl(body.read())))
check(install.event == "ONAPPINSTALL" and install.data["LANGUAGE_ID"] == "ru", "SDK parses the ONAPPINSTALL payload")
check(install.auth.oauth_token is not None and install.auth.oauth_token.refresh_token, "install auth carries a token pair")
check(install.auth.scope == ["crm", "bizproc"] and install.auth.user_id == 1, "install auth: scope list and user")

app = BitrixAppLocal(domain=domain, client_id=client_id, client_secret=client_secret)
token = BitrixTokenLocal.from_oauth(install.auth, app)
client = Client(token, max_retries=1)

added = client.crm.item.add(entity_type_id=2, fields={"title": "App deal"}).result["item"]
check(added["title"] == "App deal", "crm.item.add over OAuth")

registered = client.bizproc.robot.add(
    code="transfer_deal",
    handler=f"{handler_base}/robot",
    name={"ru": "Передать сделку", "en": "Transfer deal"},
    use_subscription=True,
    properties={"route": {"Name": {"en": "Route"}, "Type": "select", "Options": {"a": "A"}}},
    return_properties={"targetDealId": {"Name": {"en": "Target deal"}, "Type": "int"}},
    document_type=["crm", "CCrmDocumentDeal", "DEAL"],
).result
check(registered is True, "bizproc.robot.add in application context")
check(client.bizproc.robot.list().result == ["transfer_deal"], "bizproc.robot.list lists it")
try:
    client.bizproc.robot.add(code="transfer_deal", handler=f"{handler_base}/robot", name="Again").result
    check(False, "a second add of the same code is refused")
except errors.BitrixAPIError as err:
    check(err.error == "ERROR_ACTIVITY_ALREADY_INSTALLED", "a second add raises ERROR_ACTIVITY_ALREADY_INSTALLED")

bound = client.event.bind(event="ONCRMDEALUPDATE", handler=f"{handler_base}/events").result
check(bound is True, "event.bind in application context")

run = admin("POST", "app/robots/transfer_deal/run", json={"dealId": added["id"], "properties": {"route": "a"}})
workflow = OAuthWorkflowData.from_dict(dict(parse_qsl(delivery("robot", 1)["body"])))
check(workflow.workflow_id == run["workflowId"] and workflow.properties == {"route": "a"}, "SDK parses the rule run payload")
check(workflow.auth.application_token == install.auth.application_token, "the run carries the application token")
run_token = BitrixTokenLocal.from_oauth(workflow.auth, app)
sent = Client(run_token, max_retries=1).bizproc.event.send(
    event_token=workflow.event_token, return_values={"targetDealId": "77"}, log_message="copied"
).result
check(sent is True, "bizproc.event.send with the run's own token")
answered = admin("GET", f"robot-runs/{run['workflowId']}")
check(answered["returnValues"] == {"targetDealId": "77"} and answered["logMessage"] == "copied", "the workflow got the values")

client.crm.item.update(entity_type_id=2, bitrix_id=added["id"], fields={"title": "Changed"}).result
event = OAuthEventData.from_dict(dict(parse_qsl(delivery("event", 1)["body"])))
check(event.event == "ONCRMDEALUPDATE" and event.auth.oauth_token is not None, "SDK parses the application event with its token")

# Expired access token: the SDK refreshes once at the authorization server and retries.
old_refresh = token.refresh_token
admin("POST", "app/expire-tokens")
got = client.crm.item.get(entity_type_id=2, bitrix_id=added["id"]).result["item"]
check(got["title"] == "Changed", "the call succeeds after expired_token")
check(token.refresh_token != old_refresh, "the SDK took the new refresh token")
check(admin("GET", "app")["refreshes"] == 1, "exactly one refresh reached the authorization server")

# A revoked refresh token: invalid_grant as the SDK knows it.
admin("POST", "app/revoke-refresh-tokens")
admin("POST", "app/expire-tokens")
try:
    client.crm.item.get(entity_type_id=2, bitrix_id=added["id"]).result
    check(False, "a revoked refresh token fails")
except BitrixOAuthInvalidGrant:
    check(True, "a revoked refresh token raises BitrixOAuthInvalidGrant")

print("SDK APP COMPATIBLE")
