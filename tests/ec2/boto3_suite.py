"""boto3 (botocore) against sgswitch's EC2 Query API: groups in both request
shapes (keyword arguments = the flat shape, IpPermissions = the indexed one),
source groups by name and id, filters, instances with ClientToken, every error
code as a ClientError, authentication failures, two owners kept apart.
Run by tests/tests/ec2_api.rs; see common.py for the environment."""

import botocore.auth
import botocore.config
import boto3
from botocore.exceptions import ClientError

from common import (AMI, ENDPOINT, KEY_A, KEY_B, OWNER_A, OWNER_B, SECRET_A,
                    SECRET_B, SkewedClock, check, done, log)

# botocore signs with the CRT signer (botocore.crt.auth) when awscrt is
# installed (Debian's awscli pulls it in), else with botocore.auth: skew both.
SIGNERS = [botocore.auth]
try:
    import botocore.crt.auth
    SIGNERS.append(botocore.crt.auth)
except ImportError:
    pass

CFG = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"})


def client(key, secret):
    return boto3.client("ec2", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret, config=CFG)


def fails(code, status, fn, **kw):
    """`fn(**kw)` must raise ClientError `code` with HTTP `status`."""
    try:
        fn(**kw)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        st = e.response["ResponseMetadata"]["HTTPStatusCode"]
        check((got, st) == (code, status), f"{fn.__name__} {kw}: expected {code}/{status}, got {got}/{st}: {e}")
        check(e.response["ResponseMetadata"].get("RequestId"), f"{code}: no RequestId parsed")
        log(f"ERROR boto3 {code} HTTP {st}: {e.response['Error']['Message']}")
        return
    raise AssertionError(f"{fn.__name__} {kw}: expected {code}, it succeeded")


a = client(KEY_A, SECRET_A)
b = client(KEY_B, SECRET_B)

web = a.create_security_group(GroupName="web", Description="Web Servers")["GroupId"]
app = a.create_security_group(GroupName="app", Description="App")["GroupId"]
check(web.startswith("sg-") and app.startswith("sg-") and web != app, f"group ids {web} {app}")

# Flat shape (keyword arguments).
a.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
a.authorize_security_group_ingress(GroupName="app", SourceSecurityGroupName="web", SourceSecurityGroupOwnerId=OWNER_A)
# Indexed shape, by group id; source group by id.
a.authorize_security_group_ingress(GroupId=web, IpPermissions=[
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.0.0.0/8"}, {"CidrIp": "10.9.9.9/32"}]},
    {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "192.168.0.0/16"}]},
])
a.authorize_security_group_ingress(GroupId=app, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8081, "UserIdGroupPairs": [{"GroupId": web}]}])

sgs = {g["GroupName"]: g for g in a.describe_security_groups()["SecurityGroups"]}
check(set(sgs) == {"default", "web", "app"}, f"groups {sorted(sgs)}")
w = sgs["web"]
check((w["GroupId"], w["OwnerId"], w["Description"]) == (web, OWNER_A, "Web Servers"), f"web {w}")
perms = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in w["IpPermissions"]}
check(set(perms) == {("tcp", 80, 80), ("udp", 53, 53), ("icmp", 8, -1)}, f"web perms {perms}")
check([r["CidrIp"] for r in perms[("udp", 53, 53)]["IpRanges"]] == ["10.0.0.0/8", "10.9.9.9/32"], "two ranges, one permission")
ap = {(p["IpProtocol"], p.get("FromPort")): p for p in sgs["app"]["IpPermissions"]}
check(set(ap) == {("-1", None), ("tcp", 8080)}, f"app perms {ap}")
pair = ap[("-1", None)]["UserIdGroupPairs"][0]
check((pair["GroupName"], pair["GroupId"], pair["UserId"]) == ("web", web, OWNER_A), f"source group {pair}")
check("FromPort" not in ap[("-1", None)], "no ports on protocol -1")
check(ap[("tcp", 8080)]["ToPort"] == 8081, "port range")

# Describe by name, by id, by filters.
check([g["GroupName"] for g in a.describe_security_groups(GroupNames=["app"])["SecurityGroups"]] == ["app"], "by name")
check([g["GroupId"] for g in a.describe_security_groups(GroupIds=[web])["SecurityGroups"]] == [web], "by id")
by = lambda f: sorted(g["GroupName"] for g in a.describe_security_groups(Filters=f)["SecurityGroups"])
check(by([{"Name": "group-name", "Values": ["w*", "ap?"]}]) == ["app", "web"], "group-name wildcards")
check(by([{"Name": "ip-permission.group-id", "Values": [web]}]) == ["app"], "ip-permission.group-id")
check(by([{"Name": "ip-permission.cidr", "Values": ["10.*"]}, {"Name": "owner-id", "Values": [OWNER_A]}]) == ["web"], "cidr + owner")
check(by([{"Name": "description", "Values": ["default group"]}]) == ["default"], "description")

# Revoke in the other shape than the authorize.
a.revoke_security_group_ingress(GroupId=web, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
a.revoke_security_group_ingress(GroupName="web", IpProtocol="icmp", FromPort=8, ToPort=-1, CidrIp="192.168.0.0/16")
left = a.describe_security_groups(GroupIds=[web])["SecurityGroups"][0]["IpPermissions"]
check([(p["IpProtocol"], p["FromPort"]) for p in left] == [("udp", 53)], f"after revoke {left}")

# Egress rules (issue 15): a new group allows all out; both shapes; the
# limit counts them apart from ingress; describe shows the real set.
def egress(gid):
    return a.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissionsEgress"]


e = egress(app)
check([(p["IpProtocol"], [r["CidrIp"] for r in p["IpRanges"]], [r["CidrIpv6"] for r in p["Ipv6Ranges"]],
        p["UserIdGroupPairs"]) for p in e]
      == [("-1", ["0.0.0.0/0"], ["::/0"], [])] and "FromPort" not in e[0], f"default egress {e}")
a.revoke_security_group_egress(GroupId=app, IpPermissions=[
    {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
check(egress(app) == [], f"default egress revoked {egress(app)}")
# IPv6 ranges (issue 15): ingress and egress, icmpv6 described as 58.
a.authorize_security_group_ingress(GroupId=web, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32", "Description": "v6"}]},
    {"IpProtocol": "icmpv6", "FromPort": 128, "ToPort": -1, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
a.authorize_security_group_egress(GroupId=app, IpPermissions=[
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "Ipv6Ranges": [{"CidrIpv6": "fd00::/8"}]}])
g = a.describe_security_groups(GroupIds=[web])["SecurityGroups"][0]
v6 = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): [(r["CidrIpv6"], r.get("Description")) for r in p["Ipv6Ranges"]]
      for p in g["IpPermissions"] if p["Ipv6Ranges"]}
check(v6 == {("tcp", 22, 22): [("2001:db8::/32", "v6")], ("58", 128, -1): [("::/0", None)]}, f"ipv6 ingress {v6}")
check([(p["IpProtocol"], [r["CidrIpv6"] for r in p["Ipv6Ranges"]]) for p in egress(app)]
      == [("udp", ["fd00::/8"])], f"ipv6 egress {egress(app)}")
check(by([{"Name": "ip-permission.ipv6-cidr", "Values": ["2001:db8::/32"]}]) == ["web"], "ip-permission.ipv6-cidr")
fails("InvalidParameterValue", 400, a.authorize_security_group_ingress, GroupId=web, IpPermissions=[
    {"IpProtocol": "icmp", "FromPort": 8, "ToPort": 0, "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32"}]}])
a.revoke_security_group_ingress(GroupId=web, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "2001:db8::/32"}]},
    {"IpProtocol": "58", "FromPort": 128, "ToPort": -1, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
a.revoke_security_group_egress(GroupId=app, IpPermissions=[
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "Ipv6Ranges": [{"CidrIpv6": "fd00::/8"}]}])
check(egress(app) == [], f"ipv6 egress revoked {egress(app)}")
a.authorize_security_group_egress(GroupId=app, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]}])
a.authorize_security_group_egress(GroupId=app, IpProtocol="udp", FromPort=53, ToPort=53, CidrIp="10.0.0.2/32")
e = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in egress(app)}
check(set(e) == {("tcp", 5432, 5432), ("udp", 53, 53)}, f"egress {e}")
pair = e[("tcp", 5432, 5432)]["UserIdGroupPairs"][0]
check((pair["GroupId"], pair["GroupName"], pair["UserId"]) == (web, "web", OWNER_A), f"egress group {pair}")
check([r["CidrIp"] for r in e[("udp", 53, 53)]["IpRanges"]] == ["10.0.0.2/32"], f"egress cidr {e}")
check(by([{"Name": "egress.ip-permission.group-id", "Values": [web]}]) == ["app"], "egress.ip-permission.group-id")
fails("InvalidPermission.Duplicate", 400, a.authorize_security_group_egress, GroupId=app,
      IpProtocol="udp", FromPort=53, ToPort=53, CidrIp="10.0.0.2/32")
fails("InvalidPermission.NotFound", 400, a.revoke_security_group_egress, GroupId=app,
      IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
fails("RulesPerSecurityGroupLimitExceeded", 400, a.authorize_security_group_egress, GroupId=app,
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]} for p in range(1000, 1004)])
fails("InvalidGroup.NotFound", 400, a.authorize_security_group_egress, GroupId="sg-00000000",
      IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
fails("InvalidGroup.NotFound", 400, b.revoke_security_group_egress, GroupId=app,
      IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.0.0.2/32"}]}])
fails("DryRunOperation", 412, a.authorize_security_group_egress, GroupId=app, DryRun=True,
      IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
check(len(egress(app)) == 2, "egress errors changed nothing")
# The limit is per direction: ingress of app (2 rules) still takes 3 more.
a.authorize_security_group_ingress(GroupId=app, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 9000, "ToPort": 9000, "IpRanges": [{"CidrIp": f"10.9.{n}.0/24"} for n in range(3)]}])
a.revoke_security_group_ingress(GroupId=app, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 9000, "ToPort": 9000, "IpRanges": [{"CidrIp": f"10.9.{n}.0/24"} for n in range(3)]}])
# Back to the default rule (indexed revoke, flat authorize).
a.revoke_security_group_egress(GroupId=app, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]},
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.0.0.2/32"}]}])
a.authorize_security_group_egress(GroupId=app, IpProtocol="-1", CidrIp="0.0.0.0/0")
check([p["IpProtocol"] for p in egress(app)] == ["-1"], f"default egress again {egress(app)}")

# Instances: run (by group id and name, ClientToken), describe, terminate.
r = a.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, SecurityGroupIds=[web], SecurityGroups=["default"],
                    ClientToken="boto3-token-1", InstanceType="t2.micro")
ids = [i["InstanceId"] for i in r["Instances"]]
r0 = r["ReservationId"]
check(len(ids) == 2 and all(i.startswith("i-") for i in ids), f"run {r}")
check(all(i["State"] == {"Code": 16, "Name": "running"} for i in r["Instances"]), "running")
check(all(i["PrivateIpAddress"].startswith("172.31.") for i in r["Instances"]), "addresses")
check(sorted(g["GroupName"] for g in r["Groups"]) == ["default", "web"], f"groups {r['Groups']}")
check(r["OwnerId"] == OWNER_A, "owner")
again = a.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, SecurityGroupIds=[web], SecurityGroups=["default"],
                        ClientToken="boto3-token-1", InstanceType="t2.micro")
check(again["ReservationId"] == r["ReservationId"] and [i["InstanceId"] for i in again["Instances"]] == ids,
      "same ClientToken: same reservation")
fails("IdempotentParameterMismatch", 400, a.run_instances, ImageId=AMI, MinCount=1, MaxCount=1, ClientToken="boto3-token-1")
d = a.describe_instances(InstanceIds=[ids[1]])["Reservations"]
check(len(d) == 1 and [i["InstanceId"] for i in d[0]["Instances"]] == [ids[1]], f"describe one {d}")
d = a.describe_instances(Filters=[{"Name": "group-id", "Values": [web]}])["Reservations"]
check(sorted(i["InstanceId"] for res in d for i in res["Instances"]) == sorted(ids), "filter group-id")
log("INSTANCES " + " ".join(ids))

# Every error code of the API as a ClientError.
fails("InvalidGroup.Duplicate", 400, a.create_security_group, GroupName="web", Description="again")
fails("InvalidGroup.NotFound", 400, a.delete_security_group, GroupName="nope")
fails("InvalidGroup.NotFound", 400, a.describe_security_groups, GroupIds=["sg-00000000"])
fails("InvalidGroup.Reserved", 400, a.delete_security_group, GroupName="default")
fails("InvalidGroup.InUse", 400, a.delete_security_group, GroupId=web)
fails("InvalidPermission.Duplicate", 400, a.authorize_security_group_ingress, GroupName="web",
      IpProtocol="udp", FromPort=53, ToPort=53, CidrIp="10.0.0.0/8")
fails("InvalidPermission.NotFound", 400, a.revoke_security_group_ingress, GroupName="web",
      IpProtocol="tcp", FromPort=1, ToPort=1, CidrIp="1.1.1.1/32")
fails("InvalidParameterValue", 400, a.authorize_security_group_ingress, GroupName="web",
      IpProtocol="tcp", FromPort=1, ToPort=70000, CidrIp="1.1.1.1/32")
fails("InvalidParameterValue", 400, a.authorize_security_group_ingress, GroupName="web",
      IpProtocol="tcp", FromPort=1, ToPort=2, CidrIp="300.1.1.1/32")
fails("MissingParameter", 400, a.authorize_security_group_ingress, GroupName="web")
fails("RulesPerSecurityGroupLimitExceeded", 400, a.authorize_security_group_ingress, GroupName="web",
      IpPermissions=[{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]} for p in range(1000, 1010)])
fails("InvalidInstanceID.NotFound", 400, a.terminate_instances, InstanceIds=["i-00000000"])
fails("InvalidParameterValue", 400, a.run_instances, ImageId="not-an-ami", MinCount=1, MaxCount=1)
fails("InsufficientInstanceCapacity", 400, a.run_instances, ImageId=AMI, MinCount=300, MaxCount=300)
fails("InvalidAction", 400, a.create_vpc, CidrBlock="10.0.0.0/16")

# Errors exactly as AWS gives them (issue 16 item 6).
fails("InvalidParameterValue", 400, a.authorize_security_group_ingress, GroupName="web",
      IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="123.123.123.123")
fails("MissingParameter", 400, a.create_security_group, GroupName="nodesc", Description="")
fails("InvalidGroup.NotFound", 400, a.revoke_security_group_ingress, GroupId="badcompany")
fails("InvalidParameterValue", 400, a.authorize_security_group_ingress, GroupName="web",
      IpPermissions=[{"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])

# DryRun on every action (issue 16 item 2): nothing changes either way.
before = (a.describe_security_groups()["SecurityGroups"], a.describe_instances()["Reservations"])
fails("DryRunOperation", 412, a.create_security_group, GroupName="dry", Description="d", DryRun=True)
fails("DryRunOperation", 412, a.describe_security_groups, DryRun=True)
fails("DryRunOperation", 412, a.authorize_security_group_ingress, GroupName="web", DryRun=True,
      IpProtocol="tcp", FromPort=7, ToPort=7, CidrIp="10.7.7.7/32")
fails("DryRunOperation", 412, a.revoke_security_group_ingress, GroupName="web", DryRun=True,
      IpProtocol="udp", FromPort=53, ToPort=53, CidrIp="10.0.0.0/8")
fails("DryRunOperation", 412, a.run_instances, ImageId=AMI, MinCount=1, MaxCount=1, DryRun=True)
fails("DryRunOperation", 412, a.describe_instances, InstanceIds=[ids[0]], DryRun=True)
fails("DryRunOperation", 412, a.terminate_instances, InstanceIds=[ids[0]], DryRun=True)
fails("DryRunOperation", 412, a.delete_security_group, GroupName="app", DryRun=True)
fails("UnauthorizedOperation", 403, a.delete_security_group, GroupName="nope", DryRun=True)
fails("UnauthorizedOperation", 403, a.create_security_group, GroupName="web", Description="dup", DryRun=True)
fails("UnauthorizedOperation", 403, a.terminate_instances, InstanceIds=["i-00000000"], DryRun=True)
after = (a.describe_security_groups()["SecurityGroups"], a.describe_instances()["Reservations"])
check(after == before, "dry runs changed nothing")

# Tags (issue 16 item 3): on creation, CreateTags/DeleteTags/DescribeTags, in
# describes and filters.
tg = a.create_security_group(GroupName="tagged", Description="Tagged", TagSpecifications=[
    {"ResourceType": "security-group", "Tags": [{"Key": "env", "Value": "prod"}]}])
tid = tg["GroupId"]
# SecurityGroupArn: botocore models it since 2024 (Debian's 1.29 does not parse
# it; mgmt/src/ec2/tests.rs checks the XML).
arn = f"arn:aws:ec2:us-east-1:{OWNER_A}:security-group/{tid}"
check(tg.get("SecurityGroupArn", arn) == arn, f"arn {tg}")
check(tg.get("Tags") == [{"Key": "env", "Value": "prod"}], f"tags on creation {tg}")
a.create_tags(Resources=[tid, ids[0]], Tags=[{"Key": "team", "Value": "a"}])
t = a.describe_tags(Filters=[{"Name": "resource-id", "Values": [tid]}])["Tags"]
check(sorted((x["Key"], x["Value"], x["ResourceType"]) for x in t) == [("env", "prod", "security-group"), ("team", "a", "security-group")], f"describe_tags {t}")
g = a.describe_security_groups(Filters=[{"Name": "tag:env", "Values": ["pr*"]}])["SecurityGroups"]
check([x["GroupName"] for x in g] == ["tagged"], f"tag filter {g}")
check(sorted((x["Key"], x["Value"]) for x in g[0]["Tags"]) == [("env", "prod"), ("team", "a")], f"group tags {g}")
d = a.describe_instances(Filters=[{"Name": "tag-key", "Values": ["team"]}])["Reservations"]
check([i["InstanceId"] for r in d for i in r["Instances"]] == [ids[0]], f"instance tag filter {d}")
check(d[0]["Instances"][0]["Tags"] == [{"Key": "team", "Value": "a"}], f"instance tags {d}")
a.delete_tags(Resources=[tid], Tags=[{"Key": "team"}])
check([x["Key"] for x in a.describe_tags(Filters=[{"Name": "resource-id", "Values": [tid]}])["Tags"]] == ["env"], "delete_tags")
fails("InvalidID", 400, a.create_tags, Resources=["vol-12345678"], Tags=[{"Key": "k", "Value": "v"}])
fails("InvalidParameterValue", 400, a.create_tags, Resources=[tid], Tags=[{"Key": "aws:x", "Value": "v"}])
fails("InvalidGroup.NotFound", 400, b.create_tags, Resources=[tid], Tags=[{"Key": "k", "Value": "v"}])

# Rule descriptions (item 4) and rules as objects (item 5).
r = a.authorize_security_group_ingress(GroupId=tid, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
    "IpRanges": [{"CidrIp": "10.1.0.0/16", "Description": "https from vpn"}]}])
rid = r["SecurityGroupRules"][0]["SecurityGroupRuleId"]
check(rid.startswith("sgr-") and r["SecurityGroupRules"][0]["Description"] == "https from vpn", f"authorize answer {r}")
ip = a.describe_security_groups(GroupIds=[tid])["SecurityGroups"][0]["IpPermissions"]
check(ip[0]["IpRanges"] == [{"CidrIp": "10.1.0.0/16", "Description": "https from vpn"}], f"description described {ip}")
a.update_security_group_rule_descriptions_ingress(GroupId=tid, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
    "IpRanges": [{"CidrIp": "10.1.0.0/16", "Description": "https"}]}])
ip = a.describe_security_groups(GroupIds=[tid])["SecurityGroups"][0]["IpPermissions"]
check(ip[0]["IpRanges"][0]["Description"] == "https", f"description updated {ip}")
fails("InvalidPermission.NotFound", 400, a.update_security_group_rule_descriptions_egress, GroupId=tid,
      IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "no such rule"}]}])
# Egress rules have ids and descriptions too (the default ones included).
a.update_security_group_rule_descriptions_egress(GroupId=tid,
      IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "all out"}]}])
ep = a.describe_security_groups(GroupIds=[tid])["SecurityGroups"][0]["IpPermissionsEgress"]
check(ep[0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0", "Description": "all out"}], f"egress description {ep}")
rules = a.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [tid]}])["SecurityGroupRules"]
check([(x["SecurityGroupRuleId"], x["IpProtocol"], x["FromPort"], x["CidrIpv4"], x["Description"], x["IsEgress"])
       for x in rules if not x["IsEgress"]]
      == [(rid, "tcp", 443, "10.1.0.0/16", "https", False)], f"describe_security_group_rules {rules}")
out = sorted(((x.get("CidrIpv4") or x.get("CidrIpv6")), x["IpProtocol"], x.get("Description")) for x in rules if x["IsEgress"])
check(out == [("0.0.0.0/0", "-1", "all out"), ("::/0", "-1", None)]
      and all(x["SecurityGroupRuleId"].startswith("sgr-") for x in rules), f"egress rules with ids {rules}")
all6 = [x["SecurityGroupRuleId"] for x in rules if x.get("CidrIpv6") == "::/0"][0]
r = a.authorize_security_group_egress(GroupId=tid, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
    "IpRanges": [{"CidrIp": "10.2.0.0/16", "Description": "db"}]}])
eid = r["SecurityGroupRules"][0]["SecurityGroupRuleId"]
check(r["SecurityGroupRules"][0]["IsEgress"] and r["SecurityGroupRules"][0]["Description"] == "db", f"authorize egress answer {r}")
fails("InvalidSecurityGroupRuleId.NotFound", 400, a.revoke_security_group_ingress, GroupId=tid, SecurityGroupRuleIds=[eid])
fails("InvalidSecurityGroupRuleId.NotFound", 400, a.revoke_security_group_egress, GroupId=tid, SecurityGroupRuleIds=[rid])
a.modify_security_group_rules(GroupId=tid, SecurityGroupRules=[{"SecurityGroupRuleId": eid, "SecurityGroupRule": {
    "IpProtocol": "tcp", "FromPort": 5433, "ToPort": 5433, "CidrIpv4": "10.2.0.0/16", "Description": "db2"}}])
x = a.describe_security_group_rules(SecurityGroupRuleIds=[eid])["SecurityGroupRules"][0]
check((x["IsEgress"], x["FromPort"], x["Description"]) == (True, 5433, "db2"), f"egress modified, same id {x}")
a.revoke_security_group_egress(GroupId=tid, SecurityGroupRuleIds=[eid, all6])
ep = a.describe_security_groups(GroupIds=[tid])["SecurityGroups"][0]["IpPermissionsEgress"]
check([(p["IpProtocol"], p["IpRanges"], p["Ipv6Ranges"]) for p in ep] == [("-1", [{"CidrIp": "0.0.0.0/0", "Description": "all out"}], [])],
      f"egress revoked by id {ep}")
a.modify_security_group_rules(GroupId=tid, SecurityGroupRules=[{"SecurityGroupRuleId": rid, "SecurityGroupRule": {
    "IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "CidrIpv4": "10.1.0.0/16", "Description": "alt https"}}])
x = a.describe_security_group_rules(SecurityGroupRuleIds=[rid])["SecurityGroupRules"][0]
check((x["FromPort"], x["ToPort"], x["Description"]) == (8443, 8443, "alt https"), f"modified, same id {x}")
fails("InvalidSecurityGroupRuleId.NotFound", 400, a.describe_security_group_rules, SecurityGroupRuleIds=["sgr-00000000000000000"])
a.revoke_security_group_ingress(GroupId=tid, SecurityGroupRuleIds=[rid])
check([x for x in a.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [tid]}])["SecurityGroupRules"]
       if not x["IsEgress"]] == [], "revoked by id")

# Pagination (item 7): boto3's paginators over MaxResults/NextToken.
extra = [a.create_security_group(GroupName=f"page{n}", Description="P")["GroupId"] for n in range(4)]
pages = list(a.get_paginator("describe_security_groups").paginate(PaginationConfig={"PageSize": 5}))
names = [x["GroupName"] for p in pages for x in p["SecurityGroups"]]
check(len(pages) == 2 and sorted(names) == sorted(["default", "web", "app", "tagged"] + [f"page{n}" for n in range(4)]),
      f"group pages {[len(p['SecurityGroups']) for p in pages]} {names}")
for gid in extra:
    a.delete_security_group(GroupId=gid)
pages = list(a.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5}))
check(sorted(i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]) == sorted(ids), "instance pages")
fails("InvalidParameterCombination", 400, a.describe_security_groups, GroupNames=["web"], MaxResults=5)

# Two owners: B sees and touches nothing of A's.
bg = b.describe_security_groups()["SecurityGroups"]
check([(g["GroupName"], g["OwnerId"]) for g in bg] == [("default", OWNER_B)], f"B's groups {bg}")
fails("InvalidGroup.NotFound", 400, b.describe_security_groups, GroupNames=["web"])
fails("InvalidGroup.NotFound", 400, b.delete_security_group, GroupId=web)
fails("InvalidGroup.NotFound", 400, b.authorize_security_group_ingress, GroupId=web, IpProtocol="tcp",
      FromPort=1, ToPort=1, CidrIp="0.0.0.0/0")
fails("InvalidInstanceID.NotFound", 400, b.terminate_instances, InstanceIds=[ids[0]])
check(b.describe_instances()["Reservations"] == [], "B has no instances")

# Authentication failures.
fails("AuthFailure", 401, client("AKIAUNKNOWNKEY000000", SECRET_A).describe_security_groups)
fails("SignatureDoesNotMatch", 403, client(KEY_A, SECRET_B).describe_security_groups)
with SkewedClock(SIGNERS, 20):
    fails("RequestExpired", 400, a.describe_security_groups)
with SkewedClock(SIGNERS, 10):
    check(len(a.describe_security_groups()["SecurityGroups"]) == 4, "10 minutes of skew are accepted")

# Clean up: terminate, revoke the group rules, delete by id and by name.
t = a.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
check(sorted(x["InstanceId"] for x in t) == sorted(ids), f"terminate {t}")
check(all(x["CurrentState"]["Name"] == "shutting-down" and x["PreviousState"]["Code"] == 16 for x in t), "states")
# The same ClientToken after the instances are gone: that reservation, its
# instances terminated (item 7), nothing launched.
gone = a.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, SecurityGroupIds=[web], SecurityGroups=["default"],
                       ClientToken="boto3-token-1", InstanceType="t2.micro")
check(gone["ReservationId"] == r0 and [i["InstanceId"] for i in gone["Instances"]] == ids
      and all(i["State"]["Name"] == "terminated" for i in gone["Instances"]), f"token after terminate {gone}")
check(a.describe_instances()["Reservations"] == [], "nothing launched again")
a.revoke_security_group_ingress(GroupId=app, IpPermissions=[
    {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupName": "web", "UserId": OWNER_A}]},
    {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8081, "UserIdGroupPairs": [{"GroupId": web}]}])
a.delete_security_group(GroupId=web)
a.delete_security_group(GroupName="app")
a.delete_security_group(GroupId=tid)
check([g["GroupName"] for g in a.describe_security_groups()["SecurityGroups"]] == ["default"], "only default left")
done("boto3")
