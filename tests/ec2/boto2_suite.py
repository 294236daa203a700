"""boto 2.49 against sgswitch's EC2 Query API (API version 2014-10-01, the
indexed request shape, SigV4 with the scope boto derives from the host
127.0.0.1: region `0`, service `127`). Groups, rules by CIDR and source group,
instances with a client token, error codes as EC2ResponseError, authentication
failures, two owners. Run by tests/tests/ec2_api.rs; see common.py."""

import os
from urllib.parse import urlparse

# boto 2 signs EC2 requests with SigV2 unless told otherwise; sgswitch takes SigV4 only.
os.environ["EC2_USE_SIGV4"] = "True"

import boto.auth  # noqa: E402
from boto.ec2.connection import EC2Connection  # noqa: E402
from boto.ec2.regioninfo import RegionInfo  # noqa: E402
from boto.exception import EC2ResponseError  # noqa: E402

from common import (AMI, ENDPOINT, KEY_A, KEY_B, OWNER_A, OWNER_B, SECRET_A,  # noqa: E402
                    SECRET_B, SkewedClock, check, done, log)

URL = urlparse(ENDPOINT)


def conn(key, secret):
    return EC2Connection(key, secret, is_secure=False, port=URL.port, path="/",
                         region=RegionInfo(name="sgswitch", endpoint=URL.hostname))


def fails(code, status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except EC2ResponseError as e:
        check((e.error_code, e.status) == (code, status),
              f"{fn.__name__}{args}: expected {code}/{status}, got {e.error_code}/{e.status}: {e.body}")
        check(e.request_id, f"{code}: no request id parsed")
        log(f"ERROR boto2 {code} HTTP {e.status}: {e.error_message}")
        return
    raise AssertionError(f"{fn.__name__}{args}: expected {code}, it succeeded")


a = conn(KEY_A, SECRET_A)
b = conn(KEY_B, SECRET_B)
check(a.APIVersion == "2014-10-01", f"boto 2 API version {a.APIVersion}")

web = a.create_security_group("web", "Web Servers")
db = a.create_security_group("db", "Database")
check(web.id.startswith("sg-") and web.name == "web", f"created {web}")
check(web.authorize("tcp", 80, 80, "0.0.0.0/0"), "authorize cidr")
check(db.authorize("tcp", 5432, 5432, src_group=web), "authorize source group by name")
check(a.authorize_security_group("db", ip_protocol="icmp", from_port=-1, to_port=-1, cidr_ip="10.0.0.0/8"), "icmp")
check(a.authorize_security_group(group_id=web.id, ip_protocol="udp", from_port=1000, to_port=2000,
                                 cidr_ip=["172.16.0.0/12", "192.168.1.1/32"]), "by id, two cidrs")

groups = {g.name: g for g in a.get_all_security_groups()}
check(set(groups) == {"default", "web", "db"}, f"groups {groups}")
rules = {(r.ip_protocol, r.from_port, r.to_port): sorted(str(g) for g in r.grants) for r in groups["db"].rules}
check(rules == {("tcp", "5432", "5432"): [f"web-{OWNER_A}"], ("icmp", "-1", "-1"): ["10.0.0.0/8"]}, f"db rules {rules}")
grant = [r for r in groups["db"].rules if r.ip_protocol == "tcp"][0].grants[0]
check(grant.group_id == web.id and grant.owner_id == OWNER_A, f"grant {grant.group_id} {grant.owner_id}")
wr = {(r.ip_protocol, r.from_port): sorted(str(g) for g in r.grants) for r in groups["web"].rules}
check(wr == {("tcp", "80"): ["0.0.0.0/0"], ("udp", "1000"): ["172.16.0.0/12", "192.168.1.1/32"]}, f"web rules {wr}")
check([g.name for g in a.get_all_security_groups(group_ids=[db.id])] == ["db"], "by id")
check([g.name for g in a.get_all_security_groups(filters={"group-name": "d*"})] == ["db", "default"], "filter")

check(a.revoke_security_group("db", ip_protocol="icmp", from_port=-1, to_port=-1, cidr_ip="10.0.0.0/8"), "revoke")
check(db.revoke("tcp", 5432, 5432, src_group=web), "revoke source group")
check(a.get_all_security_groups(["db"])[0].rules == [], "db empty")

# Egress rules (issue 15): boto 2's indexed shape, by group id.
def egress(gid):
    return {(r.ip_protocol, r.from_port, r.to_port): sorted(str(g) for g in r.grants)
            for r in a.get_all_security_groups(group_ids=[gid])[0].rules_egress}


# The default is one permission with 0.0.0.0/0 and ::/0; boto 2 reads only
# the IPv4 range of it and cannot name IPv6 ranges, so both halves are
# revoked with a raw request of the same indexed shape.
check(set(egress(db.id)) == {("-1", None, None)} and "0.0.0.0/0" in egress(db.id)[("-1", None, None)],
      f"default egress {egress(db.id)}")
check(a.get_status("RevokeSecurityGroupEgress", {
    "GroupId": db.id, "IpPermissions.1.IpProtocol": "-1", "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0",
    "IpPermissions.1.Ipv6Ranges.1.CidrIpv6": "::/0"}, verb="POST"), "revoke default egress")
check(egress(db.id) == {}, f"default egress revoked {egress(db.id)}")
check(a.authorize_security_group_egress(db.id, "tcp", 443, 443, cidr_ip="10.0.0.0/8"), "egress cidr")
check(a.authorize_security_group_egress(db.id, "tcp", 80, 80, src_group_id=web.id), "egress group")
check(egress(db.id) == {("tcp", "443", "443"): ["10.0.0.0/8"], ("tcp", "80", "80"): [f"web-{OWNER_A}"]},
      f"egress {egress(db.id)}")
fails("InvalidPermission.Duplicate", 400, a.authorize_security_group_egress, db.id, "tcp", 443, 443,
      cidr_ip="10.0.0.0/8")
fails("InvalidPermission.NotFound", 400, a.revoke_security_group_egress, db.id, "-1", cidr_ip="0.0.0.0/0")
fails("InvalidGroup.NotFound", 400, b.revoke_security_group_egress, db.id, "tcp", 443, 443, cidr_ip="10.0.0.0/8")
check(a.revoke_security_group_egress(db.id, "tcp", 80, 80, src_group_id=web.id), "revoke egress group")
check(egress(db.id) == {("tcp", "443", "443"): ["10.0.0.0/8"]}, f"egress after revoke {egress(db.id)}")

# Instances.
res = a.run_instances(AMI, min_count=1, max_count=1, security_groups=["web"], client_token="boto2-token")
inst = res.instances[0]
check(inst.state == "running" and inst.state_code == 16, f"state {inst.state}")
check(inst.private_ip_address.startswith("172.31.") and inst.image_id == AMI, "fields")
check(res.owner_id == OWNER_A and [g.name for g in res.groups] == ["web"], f"reservation {res.owner_id} {res.groups}")
again = a.run_instances(AMI, min_count=1, max_count=1, security_groups=["web"], client_token="boto2-token")
check(again.id == res.id and again.instances[0].id == inst.id, "client token")
check([i.id for i in a.get_only_instances(instance_ids=[inst.id])] == [inst.id], "describe")
log("INSTANCES " + inst.id)

fails("InvalidGroup.Duplicate", 400, a.create_security_group, "web", "again")
fails("InvalidGroup.NotFound", 400, a.delete_security_group, "nope")
fails("InvalidGroup.InUse", 400, a.delete_security_group, "web")
fails("InvalidGroup.Reserved", 400, a.delete_security_group, "default")
fails("InvalidPermission.Duplicate", 400, a.authorize_security_group, "web", ip_protocol="tcp", from_port=80,
      to_port=80, cidr_ip="0.0.0.0/0")
fails("InvalidPermission.NotFound", 400, a.revoke_security_group, "web", ip_protocol="tcp", from_port=81,
      to_port=81, cidr_ip="0.0.0.0/0")
fails("InvalidParameterValue", 400, a.authorize_security_group, "web", ip_protocol="tcp", from_port=5,
      to_port=1, cidr_ip="0.0.0.0/0")
fails("InvalidInstanceID.NotFound", 400, a.terminate_instances, ["i-00000000"])
fails("IdempotentParameterMismatch", 400, a.run_instances, AMI, max_count=2, client_token="boto2-token")
fails("InvalidAction", 400, a.get_all_volumes)

check([(g.name, g.owner_id) for g in b.get_all_security_groups()] == [("default", OWNER_B)], "B's groups")
fails("InvalidGroup.NotFound", 400, b.get_all_security_groups, ["web"])
fails("InvalidInstanceID.NotFound", 400, b.terminate_instances, [inst.id])

fails("AuthFailure", 401, conn("AKIAUNKNOWNKEY000000", SECRET_A).get_all_security_groups)
fails("SignatureDoesNotMatch", 403, conn(KEY_A, SECRET_B).get_all_security_groups)
with SkewedClock([boto.auth], 30):
    fails("RequestExpired", 400, conn(KEY_A, SECRET_A).get_all_security_groups)

done_ = a.terminate_instances([inst.id])
check([i.id for i in done_] == [inst.id], "terminate")
check(a.delete_security_group(group_id=db.id), "delete by id")
check(a.delete_security_group("web"), "delete by name")
done("boto2")
