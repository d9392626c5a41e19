"""Drives the emulator with the official Bitrix24 Python SDK (b24pysdk) through
an incoming webhook, and checks that the SDK sees what a real portal shows it.

Usage: compat.py DOMAIN USER_ID/SECRET ADMIN_BASE_URL CA_FILE
(REQUESTS_CA_BUNDLE must point at the emulator's certificate.)
"""

import sys
import time
from urllib.parse import parse_qsl

import requests
from b24pysdk import BitrixWebhook, Client
from b24pysdk import errors
from b24pysdk.credentials.oauth_event_data import OAuthEventData
from b24pysdk.credentials.oauth_workflow_data import OAuthWorkflowData

domain, token, admin_base, ca_file = sys.argv[1:5]
# One attempt: the SDK would otherwise sleep and retry every 503.
client = Client(BitrixWebhook(domain=domain, webhook_token=token), max_retries=1)


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print("ok:", message)


# Create, read, update.
added = client.crm.item.add(entity_type_id=2, fields={"title": "From SDK", "opportunity": 150.5, "currencyId": "EUR"}).response
item = added.result["item"]
check(item["title"] == "From SDK" and item["opportunity"] == 150.5, "crm.item.add returns the item")
check(added.time.operating is not None and added.time.operating_reset_at is not None, "time.operating parsed by the SDK")
check(added.time.date_start.tzinfo is not None, "time.date_start is an ISO date with offset")

got = client.crm.item.get(entity_type_id=2, bitrix_id=item["id"]).result["item"]
check(got["id"] == item["id"] and got["stageId"] == "NEW", "crm.item.get reads it back")

updated = client.crm.item.update(entity_type_id=2, bitrix_id=item["id"], fields={"stageId": "WON"}).result["item"]
check(updated["stageId"] == "WON" and updated["title"] == "From SDK", "crm.item.update changes only what it was given")

# The update fired an outgoing-webhook event and an application robot on
# WON; the SDK's own parsers for handler payloads must accept both bodies.
session = requests.Session()
session.verify = ca_file
deliveries = []
for _ in range(250):
    deliveries = session.get(f"{admin_base}/_emulator/deliveries").json()
    if len(deliveries) >= 2:
        break
    time.sleep(0.02)
by_kind = {d["kind"]: d for d in deliveries}
event = OAuthEventData.from_dict(dict(parse_qsl(by_kind["event"]["body"])))
check(event.event == "ONCRMDEALUPDATE" and event.data["FIELDS"]["ID"] == str(item["id"]), "SDK parses the ONCRMDEALUPDATE payload")
check(event.auth.application_token == "sdk-app-token" and event.auth.domain == "sdk.test", "event auth block carries domain and application token")
workflow = OAuthWorkflowData.from_dict(dict(parse_qsl(by_kind["robot"]["body"])))
check(workflow.code == "transfer_deal" and workflow.document_id == ["crm", "CCrmDocumentDeal", f"DEAL_{item['id']}"], "SDK parses the robot payload")
check(workflow.use_subscription and workflow.properties == {"route": "wholesale"} and workflow.auth.user_id == 1, "robot payload properties, subscription and auth")
sent = client.bizproc.event.send(event_token=workflow.event_token, return_values={"targetDealId": "77"}, log_message="copied").result
check(sent is True, "bizproc.event.send accepts the robot's event token")
try:
    client.bizproc.event.send(event_token=workflow.event_token, return_values={}).result
    check(False, "a used event token is refused")
except errors.BitrixAPIAccessDenied as err:
    check(err.error == "ACCESS_DENIED", "a used event token raises BitrixAPIAccessDenied")

legacy = client.crm.deal.get(bitrix_id=item["id"]).result
check(legacy["ID"] == str(item["id"]) and legacy["STAGE_ID"] == "WON", "crm.deal.get shows the same deal in UPPER_CASE")

# A batch of adds (one HTTP request), with a reference to an earlier result.
adds = {f"d{i}": client.crm.item.add(entity_type_id=2, fields={"title": f"Bulk {i}"}) for i in range(48)}
adds["first"] = client.crm.item.get(entity_type_id=2, bitrix_id=item["id"])
batch = client.call_batch(adds).response
check(len(batch.result.result) == 49 and not batch.result.result_error, "batch ran 49 commands without errors")
check(batch.result.result["d0"]["item"]["title"] == "Bulk 0", "batch results are keyed by command name")
check(batch.result.result_time["d0"].operating is not None, "batch result_time entries parse as time blocks")

with_error = client.call_batch({"bad": client.crm.item.get(entity_type_id=2, bitrix_id=99999), "good": client.crm.item.fields(entity_type_id=2)}).response
check(with_error.result.result_error["bad"]["error"] == "NOT_FOUND" and "good" in with_error.result.result, "batch reports per-command errors in result_error")

more = client.call_batches([client.crm.item.add(entity_type_id=2, fields={"title": f"More {i}"}) for i in range(71)]).response
check(len(more.result.result) == 71, "call_batches splits 71 commands into batches of 50")

# Paging: 1 + 48 + 71 = 120 deals exist now.
first_page = client.crm.item.list(entity_type_id=2).response
check(first_page.total == 120 and first_page.next == 50 and len(first_page.result["items"]) == 50, "first page: 50 items, next=50, total=120")
everything = client.crm.item.list(entity_type_id=2).as_list().result
check(len(everything) == 120 and len({i["id"] for i in everything}) == 120, "as_list pages through all 120 items")
fast = list(client.crm.item.list(entity_type_id=2).as_list_fast().result)
check(len(fast) == 120 and [i["id"] for i in fast] == sorted(i["id"] for i in fast), "as_list_fast (start=-1, >ID windows) returns all items in ID order")
filtered = client.crm.item.list(entity_type_id=2, filter={"stageId": "WON"}).as_list().result
check([i["id"] for i in filtered] == [item["id"]], "filter by stageId")

# Errors the SDK maps to its exception types.
try:
    client.crm.item.get(entity_type_id=2, bitrix_id=99999).result
    check(False, "missing item raises")
except errors.BitrixAPINotFound as err:
    check(err.error == "NOT_FOUND", "missing item raises BitrixAPINotFound")

session.put(f"{admin_base}/_emulator/limits", json={"operatingLimitSecs": 0.01}).raise_for_status()
session.put(f"{admin_base}/_emulator/faults", json={"methods": {"crm.item.fields": {"latencyMs": 30}}}).raise_for_status()
client.crm.item.fields(entity_type_id=2).result
try:
    client.crm.item.fields(entity_type_id=2).result
    check(False, "operating limit raises")
except errors.BitrixAPIOperationTimeLimit as err:
    check(err.error == "OPERATION_TIME_LIMIT", "spent operating budget raises BitrixAPIOperationTimeLimit")

session.put(f"{admin_base}/_emulator/limits", json={"burst": 1, "drainPerSec": 0}).raise_for_status()
client.crm.item.get(entity_type_id=2, bitrix_id=item["id"]).result
try:
    client.crm.item.get(entity_type_id=2, bitrix_id=item["id"]).result
    check(False, "rate limit raises")
except errors.BitrixAPIQueryLimitExceeded as err:
    check(err.error == "QUERY_LIMIT_EXCEEDED" and err.response.status_code == 503, "leaky bucket raises BitrixAPIQueryLimitExceeded (503)")

print("SDK COMPATIBLE")
