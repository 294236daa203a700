//! The EC2 front door in process: signed requests against a real core (temp
//! store, recording data plane), answers checked as XML text.

use std::io::Read;
use std::sync::Mutex;

use super::*;
use crate::core::Core;
use crate::testutil::*;

const NOW: i64 = 1_764_150_000;

struct Api {
    _dir: TempDir,
    core: Mutex<Core>,
}

impl Handler for Api {
    fn handle(&self, req: Request) -> Reply {
        self.core.lock().unwrap().handle(req)
    }

    fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError> {
        self.core.lock().unwrap().lookup_access_key(key_id)
    }
}

fn api(tag: &str) -> Api {
    let dir = TempDir::new(tag);
    let core = core_in(&dir, config());
    Api {
        _dir: dir,
        core: Mutex::new(core),
    }
}

/// (key id, secret) of a new key of `owner`.
fn key(api: &Api, owner: &str) -> (String, String) {
    match api.handle(req_as(owner, Command::CreateAccessKey)).unwrap() {
        Response::AccessKey {
            key_id,
            secret,
            owner: o,
        } => {
            assert_eq!(o, owner);
            (key_id, secret)
        }
        other => panic!("{other:?}"),
    }
}

/// A POST signed like botocore does, at time `t`.
fn signed(key: &(String, String), body: &str, t: i64, region: &str, service: &str) -> HttpRequest {
    let amz = sigv4::format_amz_date(t);
    let headers = vec![
        ("Host".to_owned(), "127.0.0.1:8773".to_owned()),
        (
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        ),
        ("X-Amz-Date".to_owned(), amz.clone()),
    ];
    let mut auth = sigv4::Authorization {
        key_id: key.0.clone(),
        date: amz[..8].to_owned(),
        region: region.into(),
        service: service.into(),
        signed_headers: vec!["content-type".into(), "host".into(), "x-amz-date".into()],
        signature: String::new(),
    };
    let sreq = sigv4::SignedRequest {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    auth.signature = sigv4::signature(&sreq, &auth, &amz, &key.1);
    let mut headers = headers;
    headers.push((
        "Authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
            auth.key_id,
            auth.scope(),
            auth.signed_headers.join(";"),
            auth.signature
        ),
    ));
    HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers,
        body: body.as_bytes().to_vec(),
        close: false,
    }
}

fn call(api: &Api, key: &(String, String), body: &str) -> (u16, String) {
    let r = handle(&signed(key, body, NOW, "us-east-1", "ec2"), api, NOW);
    (r.status, String::from_utf8(r.body).unwrap())
}

fn ok(api: &Api, key: &(String, String), body: &str) -> String {
    let (status, text) = call(api, key, body);
    assert_eq!(status, 200, "{body}\n{text}");
    text
}

fn err(api: &Api, key: &(String, String), body: &str) -> (u16, String) {
    let (status, text) = call(api, key, body);
    assert_ne!(status, 200, "{body}\n{text}");
    assert!(text.contains("<Response><Errors><Error><Code>"), "{text}");
    assert!(
        text.contains("</Message></Error></Errors><RequestID>"),
        "{text}"
    );
    let code = text
        .split("<Code>")
        .nth(1)
        .unwrap()
        .split("</Code>")
        .next()
        .unwrap()
        .to_owned();
    (status, code)
}

/// The text of the first `<tag>` in `doc`.
fn first<'a>(doc: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    doc.split(&open)
        .nth(1)
        .unwrap_or_else(|| panic!("no <{tag}> in {doc}"))
        .split(&format!("</{tag}>"))
        .next()
        .unwrap()
}

#[test]
fn group_lifecycle_in_both_shapes_with_ids_and_filters() {
    let api = api("ec2-groups");
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=Web+Servers"),
    );
    assert!(doc.contains("<CreateSecurityGroupResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>"), "{doc}");
    assert_eq!(first(&doc, "return"), "true");
    let web_id = first(&doc, "groupId").to_owned();
    assert!(filter::model::is_id("sg-", &web_id), "{web_id}");
    let doc = ok(
        &api,
        &k,
        "Action=CreateSecurityGroup&Version=2014-10-01&GroupName=app&GroupDescription=App",
    );
    assert!(
        doc.contains("xmlns=\"http://ec2.amazonaws.com/doc/2014-10-01/\""),
        "boto 2's version echoed: {doc}"
    );
    let app_id = first(&doc, "groupId").to_owned();

    // Indexed shape (awscli, boto 2): two permissions, two CIDRs, by group id.
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupId={web_id}\
         &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=80&IpPermissions.1.ToPort=80\
         &IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0&IpPermissions.1.IpRanges.2.CidrIp=10.1.2.3%2F8\
         &IpPermissions.2.IpProtocol=icmp&IpPermissions.2.FromPort=-1&IpPermissions.2.ToPort=-1\
         &IpPermissions.2.IpRanges.1.CidrIp=172.16.0.0%2F12"
        ),
    );
    // Flat shape (boto3 keywords): a source group by name and owner.
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=app&SourceSecurityGroupName=web&SourceSecurityGroupOwnerId={OWNER}"
        ),
    );
    // Indexed source group by id, protocol -1 (no ports).
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.Groups.1.GroupId={app_id}"
        ),
    );
    let model_rules = {
        let core = api.core.lock().unwrap();
        core.model()
            .group(&filter::model::Owner(OWNER.into()), "web")
            .unwrap()
            .rules
            .len()
    };
    assert_eq!(model_rules, 4, "three CIDR rules and one group rule");

    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&GroupName.1=web"),
    );
    let item = first(&doc, "securityGroupInfo");
    assert_eq!(first(item, "groupId"), web_id);
    assert_eq!(first(item, "groupDescription"), "Web Servers");
    assert_eq!(first(item, "ownerId"), OWNER);
    assert!(item.contains("<item><ipProtocol>tcp</ipProtocol><fromPort>80</fromPort><toPort>80</toPort><groups></groups><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item><item><cidrIp>10.0.0.0/8</cidrIp></item></ipRanges>"), "{item}");
    assert!(
        item.contains("<ipProtocol>icmp</ipProtocol><fromPort>-1</fromPort><toPort>-1</toPort>"),
        "{item}"
    );
    assert!(
        item.contains(&format!("<item><ipProtocol>-1</ipProtocol><groups><item><userId>{OWNER}</userId><groupId>{app_id}</groupId><groupName>app</groupName></item></groups>")),
        "protocol -1 without ports, source group with its id: {item}"
    );
    assert!(
        item.contains("<ipPermissionsEgress><item><ipProtocol>-1</ipProtocol>"),
        "{item}"
    );

    // By id; by filters with wildcards; filters on rules.
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&GroupId.1={app_id}"),
    );
    assert_eq!(
        doc.matches("<groupName>app</groupName>").count(),
        1,
        "{doc}"
    );
    let names = |doc: &str| -> Vec<String> {
        first(doc, "securityGroupInfo")
            .split("<ownerId>")
            .skip(1)
            .map(|s| first(s, "groupName").to_owned())
            .collect()
    };
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroups&{v}&Filter.1.Name=group-name&Filter.1.Value.1=w*&Filter.1.Value.2=ap%3F"
        ),
    );
    assert_eq!(names(&doc), ["app", "web"]);
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroups&{v}&Filter.1.Name=ip-permission.from-port&Filter.1.Value.1=80"
        ),
    );
    assert_eq!(names(&doc), ["web"]);
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroups&{v}&Filter.1.Name=ip-permission.group-name&Filter.1.Value.1=web&Filter.2.Name=owner-id&Filter.2.Value.1={OWNER}"
        ),
    );
    assert_eq!(names(&doc), ["app"]);
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroups&{v}&Filter.1.Name=description&Filter.1.Value.1=default*"
        ),
    );
    assert_eq!(names(&doc), ["default"]);
    assert_eq!(
        err(
            &api,
            &k,
            &format!("Action=DescribeSecurityGroups&{v}&Filter.1.Name=vpc-idx&Filter.1.Value.1=x")
        )
        .1,
        "InvalidParameterValue"
    );

    // Revoke in the other shape than the authorize; all or nothing.
    let before = api.core.lock().unwrap().dump();
    let (status, code) = err(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupIngress&{v}&GroupName=web&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=80&IpPermissions.1.ToPort=80\
         &IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0&IpPermissions.1.IpRanges.2.CidrIp=9.9.9.9%2F32"
        ),
    );
    assert_eq!((status, code.as_str()), (400, "InvalidPermission.NotFound"));
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing revoked");
    ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupIngress&{v}&GroupId={web_id}&IpProtocol=tcp&FromPort=80&ToPort=80&CidrIp=0.0.0.0%2F0"
        ),
    );

    // Errors with the CLI's codes.
    let e = |body: String| err(&api, &k, &body).1;
    assert_eq!(
        e(format!(
            "Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=x"
        )),
        "InvalidGroup.Duplicate"
    );
    assert_eq!(
        e(format!("Action=CreateSecurityGroup&{v}&GroupName=x")),
        "MissingParameter"
    );
    assert_eq!(
        e(format!("Action=DeleteSecurityGroup&{v}&GroupName=nope")),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        e(format!(
            "Action=DeleteSecurityGroup&{v}&GroupId=sg-00000000"
        )),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        e(format!("Action=DeleteSecurityGroup&{v}&GroupName=default")),
        "InvalidGroup.Reserved"
    );
    assert_eq!(
        e(format!("Action=DeleteSecurityGroup&{v}&GroupName=web")),
        "InvalidGroup.InUse"
    );
    assert_eq!(
        e(format!("Action=DeleteSecurityGroup&{v}")),
        "MissingParameter"
    );
    assert_eq!(
        e(format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpProtocol=tcp&FromPort=1&ToPort=70000&CidrIp=1.2.3.4%2F32"
        )),
        "InvalidParameterValue"
    );
    assert_eq!(
        e(format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=80&IpPermissions.1.ToPort=80&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0%2F8"
        )),
        "InvalidPermission.Duplicate"
    );
    assert_eq!(
        e(format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web"
        )),
        "MissingParameter"
    );
    assert_eq!(
        e(format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=1&IpPermissions.1.ToPort=2&IpPermissions.1.Groups.1.GroupName=ghost"
        )),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        e(format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpProtocol=gre&CidrIp=1.2.3.4%2F32"
        )),
        "InvalidParameterValue"
    );
    assert_eq!(
        e(format!(
            "Action=RevokeSecurityGroupIngress&{v}&GroupName=web&IpProtocol=udp&FromPort=1&ToPort=1&CidrIp=1.2.3.4%2F32"
        )),
        "InvalidPermission.NotFound"
    );
    assert_eq!(e(format!("Action=CreateVpc&{v}")), "InvalidAction");
    assert_eq!(e(v.to_owned()), "MissingParameter");

    // Delete by id once nothing refers to it.
    ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupIngress&{v}&GroupName=app&SourceSecurityGroupName=web&SourceSecurityGroupOwnerId={OWNER}"
        ),
    );
    ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupIngress&{v}&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.Groups.1.GroupName=app"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DeleteSecurityGroup&{v}&GroupId={app_id}"),
    );
    assert_eq!(first(&doc, "return"), "true");
    assert_eq!(
        e(format!("Action=DescribeSecurityGroups&{v}&GroupName.1=app")),
        "InvalidGroup.NotFound"
    );
}

#[test]
fn authentication_failures() {
    let api = api("ec2-auth");
    let k = key(&api, OWNER);
    let body = "Action=DescribeSecurityGroups&Version=2016-11-15";
    let code_of = |r: HttpResponse| {
        let t = String::from_utf8(r.body).unwrap();
        (r.status, first(&t, "Code").to_owned())
    };
    // Valid, in any declared scope (boto 2 at 127.0.0.1: region 0, service 127).
    assert_eq!(
        handle(&signed(&k, body, NOW, "0", "127"), &api, NOW).status,
        200
    );
    let unknown = ("AKIAUNKNOWNUNKNOWN00".to_owned(), k.1.clone());
    assert_eq!(
        code_of(handle(
            &signed(&unknown, body, NOW, "us-east-1", "ec2"),
            &api,
            NOW
        )),
        (401, "AuthFailure".into())
    );
    let bad_secret = (k.0.clone(), "x".repeat(40));
    assert_eq!(
        code_of(handle(
            &signed(&bad_secret, body, NOW, "us-east-1", "ec2"),
            &api,
            NOW
        )),
        (403, "SignatureDoesNotMatch".into())
    );
    assert_eq!(
        code_of(handle(
            &signed(&k, body, NOW - 16 * 60, "us-east-1", "ec2"),
            &api,
            NOW
        )),
        (400, "RequestExpired".into())
    );
    assert_eq!(
        handle(
            &signed(&k, body, NOW - 14 * 60, "us-east-1", "ec2"),
            &api,
            NOW
        )
        .status,
        200
    );
    // A body changed after signing.
    let mut tampered = signed(&k, body, NOW, "us-east-1", "ec2");
    tampered.body = b"Action=DeleteSecurityGroup&GroupName=default".to_vec();
    assert_eq!(
        code_of(handle(&tampered, &api, NOW)),
        (403, "SignatureDoesNotMatch".into())
    );
    let mut none = signed(&k, body, NOW, "us-east-1", "ec2");
    none.headers.retain(|(n, _)| n != "Authorization");
    assert_eq!(
        code_of(handle(&none, &api, NOW)),
        (403, "MissingAuthenticationToken".into())
    );
    let mut junk = signed(&k, body, NOW, "us-east-1", "ec2");
    junk.headers.last_mut().unwrap().1 = "AWS4-HMAC-SHA256 garbage".into();
    assert_eq!(
        code_of(handle(&junk, &api, NOW)),
        (400, "IncompleteSignature".into())
    );
    // The secret never crosses the socket: the lookup cannot be deserialised.
    let line = format!(
        "{{\"command\":{{\"op\":\"lookup-access-key\",\"key_id\":\"{}\"}}}}",
        k.0
    );
    assert!(crate::api::decode_request(line.as_bytes()).is_err());
}

#[test]
fn get_with_query_parameters_is_served() {
    let api = api("ec2-get");
    let k = key(&api, OWNER);
    let query = "Action=DescribeSecurityGroups&Version=2016-11-15&GroupName.1=default";
    let amz = sigv4::format_amz_date(NOW);
    let headers = vec![
        ("host".to_owned(), "localhost".to_owned()),
        ("x-amz-date".to_owned(), amz.clone()),
    ];
    let mut auth = sigv4::Authorization {
        key_id: k.0.clone(),
        date: amz[..8].into(),
        region: "us-east-1".into(),
        service: "ec2".into(),
        signed_headers: vec!["host".into(), "x-amz-date".into()],
        signature: String::new(),
    };
    auth.signature = sigv4::signature(
        &sigv4::SignedRequest {
            method: "GET",
            path: "/",
            query,
            headers: &headers,
            body: b"",
        },
        &auth,
        &amz,
        &k.1,
    );
    let mut headers = headers;
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders=host;x-amz-date,Signature={}",
            k.0,
            auth.scope(),
            auth.signature
        ),
    ));
    let r = handle(
        &HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers,
            body: vec![],
            close: true,
        },
        &api,
        NOW,
    );
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(r.status, 200, "{text}");
    assert_eq!(first(&text, "groupName"), "default");
}

#[test]
fn owners_are_kept_apart() {
    let api = api("ec2-owners");
    let a = key(&api, OWNER);
    let b = key(&api, OTHER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &a,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=secret&GroupDescription=A"),
    );
    let id = first(&doc, "groupId").to_owned();
    // B sees only its own default group, and A's group neither by name nor id.
    let doc = ok(&api, &b, &format!("Action=DescribeSecurityGroups&{v}"));
    assert_eq!(doc.matches("<ownerId>").count(), 1, "{doc}");
    assert!(
        doc.contains(&format!("<ownerId>{OTHER}</ownerId>")) && !doc.contains("secret"),
        "{doc}"
    );
    assert_eq!(
        err(
            &api,
            &b,
            &format!("Action=DescribeSecurityGroups&{v}&GroupName.1=secret")
        )
        .1,
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        err(
            &api,
            &b,
            &format!("Action=DeleteSecurityGroup&{v}&GroupId={id}")
        )
        .1,
        "InvalidGroup.NotFound"
    );
    assert_eq!(err(&api, &b, &format!("Action=AuthorizeSecurityGroupIngress&{v}&GroupId={id}&IpProtocol=tcp&FromPort=1&ToPort=1&CidrIp=0.0.0.0%2F0")).1, "InvalidGroup.NotFound");
    // Naming A's group as a source by id without A's UserId: not B's group.
    assert_eq!(err(&api, &b, &format!("Action=AuthorizeSecurityGroupIngress&{v}&GroupName=default&IpPermissions.1.IpProtocol=-1&IpPermissions.1.Groups.1.GroupId={id}")).1, "InvalidGroup.NotFound");
    // With it (EC2's cross-account source group), the rule shows A's group id.
    ok(
        &api,
        &b,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=default&IpPermissions.1.IpProtocol=-1&IpPermissions.1.Groups.1.GroupId={id}&IpPermissions.1.Groups.1.UserId={OWNER}"
        ),
    );
    let doc = ok(
        &api,
        &b,
        &format!("Action=DescribeSecurityGroups&{v}&GroupName.1=default"),
    );
    assert!(
        doc.contains(&format!(
            "<userId>{OWNER}</userId><groupId>{id}</groupId><groupName>secret</groupName>"
        )),
        "{doc}"
    );
    // A's instances are not B's.
    let doc = ok(
        &api,
        &a,
        &format!("Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=1&MaxCount=1"),
    );
    let iid = first(&doc, "instanceId").to_owned();
    assert_eq!(
        err(
            &api,
            &b,
            &format!("Action=TerminateInstances&{v}&InstanceId.1={iid}")
        )
        .1,
        "InvalidInstanceID.NotFound"
    );
    let doc = ok(&api, &b, &format!("Action=DescribeInstances&{v}"));
    assert!(!doc.contains(&iid), "{doc}");
}

#[test]
fn run_describe_terminate_with_client_token() {
    let api = api("ec2-run");
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=W"),
    );
    let web_id = first(&doc, "groupId").to_owned();
    let run = format!(
        "Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=2&MaxCount=2&SecurityGroupId.1={web_id}&SecurityGroup.1=default&ClientToken=tok-1&InstanceType=t2.micro"
    );
    let doc = ok(&api, &k, &run);
    assert!(
        doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RunInstancesResponse xmlns="),
        "{doc}"
    );
    let res = first(&doc, "reservationId").to_owned();
    assert_eq!(first(&doc, "ownerId"), OWNER);
    assert_eq!(doc.matches("<instanceId>").count(), 2, "{doc}");
    assert!(
        doc.contains("<instanceState><code>16</code><name>running</name></instanceState>"),
        "{doc}"
    );
    assert!(
        doc.contains(&format!(
            "<item><groupId>{web_id}</groupId><groupName>web</groupName></item>"
        )),
        "{doc}"
    );
    assert!(doc.contains("<privateIpAddress>172.31.0."), "{doc}");
    // The same token again: the same reservation, nothing new launched.
    let again = ok(&api, &k, &run);
    assert_eq!(first(&again, "reservationId"), res);
    assert_eq!(api.core.lock().unwrap().model().instances().len(), 2);
    // The same token with other parameters.
    let (_, code) = err(&api, &k, &run.replace("MaxCount=2", "MaxCount=3"));
    assert_eq!(code, "IdempotentParameterMismatch");
    let ids: Vec<String> = doc
        .split("<instanceId>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_owned())
        .collect();

    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeInstances&{v}&InstanceId.1={}", ids[1]),
    );
    assert_eq!(doc.matches("<instanceId>").count(), 1, "{doc}");
    assert!(
        doc.contains(&format!(
            "<reservationSet><item><reservationId>{res}</reservationId>"
        )),
        "{doc}"
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeInstances&{v}&Filter.1.Name=group-id&Filter.1.Value.1={web_id}"),
    );
    assert_eq!(doc.matches("<instanceId>").count(), 2, "{doc}");
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeInstances&{v}&Filter.1.Name=instance-state-name&Filter.1.Value.1=stopped"
        ),
    );
    assert_eq!(doc.matches("<instanceId>").count(), 0, "{doc}");

    let e = |body: String| err(&api, &k, &body).1;
    assert_eq!(
        e(format!("Action=RunInstances&{v}&MinCount=1&MaxCount=1")),
        "MissingParameter"
    );
    assert_eq!(
        e(format!(
            "Action=RunInstances&{v}&ImageId=ami-eca54085&MaxCount=1"
        )),
        "MissingParameter"
    );
    assert_eq!(
        e(format!(
            "Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=2&MaxCount=1"
        )),
        "InvalidParameterValue"
    );
    assert_eq!(
        e(format!(
            "Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=1&MaxCount=1&SecurityGroup.1=ghost"
        )),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        e(format!(
            "Action=RunInstances&{v}&ImageId=bogus&MinCount=1&MaxCount=1"
        )),
        "InvalidParameterValue"
    );
    assert_eq!(
        e(format!(
            "Action=DescribeInstances&{v}&InstanceId.1=i-00000000"
        )),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        e(format!("Action=TerminateInstances&{v}")),
        "MissingParameter"
    );

    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=TerminateInstances&{v}&InstanceId.1={}&InstanceId.2={}",
            ids[0], ids[1]
        ),
    );
    assert!(doc.contains(&format!("<item><instanceId>{}</instanceId><currentState><code>32</code><name>shutting-down</name></currentState><previousState><code>16</code><name>running</name></previousState></item>", ids[0])), "{doc}");
    assert!(api.core.lock().unwrap().model().instances().is_empty());
    assert_eq!(
        e(format!(
            "Action=TerminateInstances&{v}&InstanceId.1={}",
            ids[0]
        )),
        "InvalidInstanceID.NotFound"
    );
}

#[test]
fn keys_and_tokens_survive_a_restart() {
    let dir = TempDir::new("ec2-restart");
    let k;
    {
        let api = Api {
            core: Mutex::new(core_in(&dir, config())),
            _dir: TempDir::new("ec2-restart-unused"),
        };
        k = key(&api, OTHER);
        ok(
            &api,
            &k,
            "Action=RunInstances&Version=2016-11-15&ImageId=ami-eca54085&MinCount=1&MaxCount=1&ClientToken=t1",
        );
    }
    let api = Api {
        core: Mutex::new(core_in(&dir, config())),
        _dir: TempDir::new("ec2-restart-unused2"),
    };
    let doc = ok(
        &api,
        &k,
        "Action=RunInstances&Version=2016-11-15&ImageId=ami-eca54085&MinCount=1&MaxCount=1&ClientToken=t1",
    );
    assert_eq!(doc.matches("<instanceId>").count(), 1, "{doc}");
    assert_eq!(
        api.core.lock().unwrap().model().instances().len(),
        1,
        "not launched again"
    );
    assert!(
        doc.contains(&format!("<ownerId>{OTHER}</ownerId>")),
        "{doc}"
    );
}

#[test]
fn server_over_tcp_answers_and_survives_garbage() {
    use std::io::Write as _;
    let api: Arc<dyn Handler> = Arc::new(api("ec2-tcp"));
    let srv = Ec2Server::start("127.0.0.1:0".parse().unwrap(), api).unwrap();
    let addr = srv.local_addr();
    assert_ne!(addr.port(), 0);
    let exchange = |raw: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let r = exchange(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nConnection: close\r\n\r\nAction=CreateVpc&a=1");
    assert!(r.starts_with("HTTP/1.1 403 "), "{r}");
    assert!(r.contains("<Code>MissingAuthenticationToken</Code>"), "{r}");
    let r = exchange(b"\x00\x01\x02 nonsense\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // A second bind of the same address is a clear error naming it.
    let e = Ec2Server::start(addr, Arc::new(|_r: Request| -> Reply { unreachable!() }))
        .err()
        .unwrap();
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    srv.stop();
}

#[test]
fn a_registered_ami_boots_qemu_guests_any_other_namespace_instances() {
    let dir = TempDir::new("ec2-qemu");
    let dp = crate::testutil::RecordingDataplane::default();
    let api = Api {
        core: Mutex::new(core_with(&dir, config(), dp.clone())),
        _dir: TempDir::new("ec2-qemu-unused"),
    };
    let kernel = dir.0.join("vmlinuz");
    let initrd = dir.0.join("initrd.img");
    crate::testutil::write_fake_kernel(&kernel);
    crate::testutil::write_fake_initrd(&initrd);
    api.handle(req(Command::RegisterImage {
        ami: "ami-5e1f0001".into(),
        kernel,
        initrd,
        disk: None,
        memory_mb: None,
        append: None,
    }))
    .unwrap();
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &k,
        &format!("Action=RunInstances&{v}&ImageId=ami-5e1f0001&MinCount=1&MaxCount=1"),
    );
    let guest = first(&doc, "instanceId").to_owned();
    // A guest before its first lease: pending, and EC2's stateReason says why.
    dp.state.lock().unwrap().qemu_liveness = Some(crate::core::Liveness::Pending(
        "booting on accel tcg: test; waiting for its first DHCP lease".into(),
    ));
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeInstances&{v}&InstanceId.1={guest}"),
    );
    assert!(
        doc.contains("<instanceState><code>0</code><name>pending</name></instanceState>")
            && doc.contains("<stateReason><code>Server.Pending</code><message>booting on accel tcg: test; waiting for its first DHCP lease</message></stateReason>"),
        "{doc}"
    );
    dp.state.lock().unwrap().qemu_liveness = None;
    let doc = ok(
        &api,
        &k,
        &format!("Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=1&MaxCount=1"),
    );
    assert!(!doc.contains("stateReason"), "{doc}");
    let netns = first(&doc, "instanceId").to_owned();
    let booted: Vec<String> = dp
        .state
        .lock()
        .unwrap()
        .booted
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(booted.len(), 1, "only the registered AMI boots a guest");
    assert_eq!(booted[0], guest);
    let Ok(Response::Reservations { reservations }) = api.handle(req(Command::DescribeInstances {
        ids: vec![guest.clone(), netns.clone()],
    })) else {
        panic!()
    };
    let place = |id: &str| {
        reservations
            .iter()
            .flat_map(|r| &r.instances)
            .find(|i| i.id == id)
            .map(|i| i.place.clone())
            .unwrap()
    };
    assert!(place(&guest).starts_with("qemu:"), "{reservations:?}");
    assert!(place(&netns).starts_with("netns:"), "{reservations:?}");
}

/// Issue 16 item 6: errors as AWS gives them, in AWS's order.
#[test]
fn errors_exactly_as_aws_gives_them() {
    let api = api("ec2-aws-errors");
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    ok(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=Web"),
    );
    let before = api.core.lock().unwrap().dump();
    let cases = [
        // No prefix length: not taken as /32.
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=123.123.123.123",
            (400, "InvalidParameterValue"),
        ),
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.1",
            (400, "InvalidParameterValue"),
        ),
        // An empty description is a missing one.
        (
            "Action=CreateSecurityGroup&GroupName=db&GroupDescription=",
            (400, "MissingParameter"),
        ),
        (
            "Action=CreateSecurityGroup&GroupName=db",
            (400, "MissingParameter"),
        ),
        // The unknown group first, then the missing permissions.
        (
            "Action=RevokeSecurityGroupIngress&GroupId=badcompany",
            (400, "InvalidGroup.NotFound"),
        ),
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=nope&IpPermissions.1.FromPort=1",
            (400, "InvalidGroup.NotFound"),
        ),
        (
            "Action=RevokeSecurityGroupIngress&GroupName=web",
            (400, "MissingParameter"),
        ),
        (
            "Action=ModifySecurityGroupRules&GroupId=badcompany&SecurityGroupRule.1.SecurityGroupRuleId=sgr-1",
            (400, "InvalidGroup.NotFound"),
        ),
        (
            "Action=UpdateSecurityGroupRuleDescriptionsIngress&GroupId=badcompany&IpPermissions.1.FromPort=1",
            (400, "InvalidGroup.NotFound"),
        ),
        // TCP/UDP without ports: not "all ports".
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpProtocol=tcp&CidrIp=10.0.0.0/8",
            (400, "InvalidParameterValue"),
        ),
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpPermissions.1.IpProtocol=udp&IpPermissions.1.FromPort=53&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8",
            (400, "InvalidParameterValue"),
        ),
    ];
    for (body, want) in cases {
        let (status, code) = err(&api, &k, &format!("{body}&{v}"));
        assert_eq!((status, code.as_str()), want, "{body}");
    }
    let (_, text) = call(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpProtocol=tcp&CidrIp=10.0.0.0/8"
        ),
    );
    assert!(
        text.contains(
            "Invalid value for portRange. Must specify both from and to ports with TCP/UDP."
        ),
        "{text}"
    );
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing changed");
}

/// Issue 16 item 1: "who am I" on the same endpoint, signed for sts or iam.
#[test]
fn caller_identity_and_iam_get_user() {
    let api = api("ec2-whoami");
    let k = key(&api, OWNER);
    let sts = |body: &str, service: &str| {
        let r = handle(&signed(&k, body, NOW, "us-east-1", service), &api, NOW);
        (r.status, String::from_utf8(r.body).unwrap())
    };
    let (status, doc) = sts("Action=GetCallerIdentity&Version=2011-06-15", "sts");
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc.contains("<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult>"),
        "{doc}"
    );
    assert_eq!(first(&doc, "Account"), OWNER);
    assert_eq!(first(&doc, "UserId"), OWNER);
    assert_eq!(first(&doc, "Arn"), format!("arn:aws:iam::{OWNER}:root"));
    assert!(!first(&doc, "RequestId").is_empty());
    let (status, doc) = sts("Action=GetUser&Version=2010-05-08", "iam");
    assert_eq!(status, 200, "{doc}");
    assert!(doc.contains("<GetUserResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">"));
    assert_eq!(first(&doc, "Arn"), format!("arn:aws:iam::{OWNER}:root"));
    // Another owner's key is another account; an unknown key is refused.
    let kb = key(&api, OTHER);
    let r = handle(
        &signed(
            &kb,
            "Action=GetCallerIdentity&Version=2011-06-15",
            NOW,
            "us-east-1",
            "sts",
        ),
        &api,
        NOW,
    );
    assert_eq!(first(&String::from_utf8(r.body).unwrap(), "Account"), OTHER);
    let unknown = ("AKIAUNKNOWNUNKNOWN00".to_owned(), k.1.clone());
    let r = handle(
        &signed(
            &unknown,
            "Action=GetCallerIdentity&Version=2011-06-15",
            NOW,
            "us-east-1",
            "sts",
        ),
        &api,
        NOW,
    );
    assert_eq!(r.status, 401);
}

/// Issue 16 item 2: DryRun on every action: 412 DryRunOperation when the call
/// would have succeeded, 403 UnauthorizedOperation when not; parameter errors
/// first; nothing changes (model, records, store, data plane).
#[test]
fn dry_run_on_every_action_changes_nothing() {
    let dir = TempDir::new("ec2-dryrun");
    let dp = RecordingDataplane::default();
    let seen = dp.state.clone();
    let api = Api {
        core: Mutex::new(core_with(&dir, config(), dp)),
        _dir: dir,
    };
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=W"),
    );
    let web_id = first(&doc, "groupId").to_owned();
    let doc = ok(
        &api,
        &k,
        &format!("Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=1&MaxCount=1"),
    );
    let iid = first(&doc, "instanceId").to_owned();
    let before = api.core.lock().unwrap().dump();
    let launches = seen.lock().unwrap().launches;
    let published = seen.lock().unwrap().published.len();
    let would_succeed = [
        "Action=CreateSecurityGroup&GroupName=db&GroupDescription=D".to_owned(),
        format!("Action=DeleteSecurityGroup&GroupId={web_id}"),
        "Action=DescribeSecurityGroups&GroupName.1=web".to_owned(),
        "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=10.0.0.0/8".to_owned(),
        "Action=RunInstances&ImageId=ami-eca54085&MinCount=2&MaxCount=2&SecurityGroup.1=web".to_owned(),
        format!("Action=DescribeInstances&InstanceId.1={iid}"),
        format!("Action=TerminateInstances&InstanceId.1={iid}"),
    ];
    for body in &would_succeed {
        let (status, code) = err(&api, &k, &format!("{body}&{v}&DryRun=true"));
        assert_eq!((status, code.as_str()), (412, "DryRunOperation"), "{body}");
    }
    let would_fail = [
        "Action=CreateSecurityGroup&GroupName=web&GroupDescription=dup",
        "Action=DeleteSecurityGroup&GroupName=default",
        "Action=DescribeSecurityGroups&GroupName.1=nope",
        "Action=RevokeSecurityGroupIngress&GroupName=web&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=10.0.0.0/8",
        "Action=RunInstances&ImageId=ami-eca54085&MinCount=1&MaxCount=1&SecurityGroup.1=nope",
        "Action=TerminateInstances&InstanceId.1=i-00000000",
    ];
    for body in would_fail {
        let (status, text) = call(&api, &k, &format!("{body}&{v}&DryRun=true"));
        assert_eq!(status, 403, "{body}: {text}");
        assert_eq!(first(&text, "Code"), "UnauthorizedOperation", "{body}");
        assert!(
            first(&text, "Message").contains("would have failed with Invalid"),
            "{text}"
        );
    }
    // Parameter errors come before the dry run, as EC2 checks them first.
    let (status, code) = err(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=db&DryRun=true"),
    );
    assert_eq!((status, code.as_str()), (400, "MissingParameter"));
    let (_, code) = err(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&DryRun=maybe"),
    );
    assert_eq!(code, "InvalidParameterValue");
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing changed");
    assert_eq!(seen.lock().unwrap().launches, launches, "nothing launched");
    assert_eq!(
        seen.lock().unwrap().published.len(),
        published,
        "nothing published"
    );
    // DryRun=false is an ordinary call.
    ok(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=db&GroupDescription=D&DryRun=false"),
    );
}

/// Issue 16 item 8: access keys are listed (never their secrets) and deleted;
/// a deleted key is refused at once and after a restart; another owner's
/// key cannot be deleted.
#[test]
fn access_keys_are_listed_and_deleted() {
    let dir = TempDir::new("ec2-keys");
    let body = "Action=DescribeSecurityGroups&Version=2016-11-15";
    let (k1, k2, kb);
    {
        let api = Api {
            core: Mutex::new(core_in(&dir, config())),
            _dir: TempDir::new("ec2-keys-unused"),
        };
        k1 = key(&api, OWNER);
        k2 = key(&api, OWNER);
        kb = key(&api, OTHER);
        let listed = match api
            .handle(req_as(OWNER, Command::DescribeAccessKeys))
            .unwrap()
        {
            Response::AccessKeys { keys } => keys,
            other => panic!("{other:?}"),
        };
        let mut want = vec![k1.0.clone(), k2.0.clone()];
        want.sort();
        assert_eq!(
            listed.iter().map(|k| k.key_id.clone()).collect::<Vec<_>>(),
            want
        );
        assert!(listed.iter().all(|k| k.owner == OWNER && k.created_at > 0));
        let json = serde_json::to_string(&listed).unwrap();
        assert!(!json.contains(&k1.1) && !json.contains(&k2.1), "{json}");
        // Not another owner's key.
        let e = api
            .handle(req_as(
                OTHER,
                Command::DeleteAccessKey {
                    key_id: k1.0.clone(),
                },
            ))
            .unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        assert!(e.message.contains(&k1.0), "{}", e.message);
        assert_eq!(call(&api, &k1, body).0, 200);
        let deleted = api
            .handle(req_as(
                OWNER,
                Command::DeleteAccessKey {
                    key_id: k1.0.clone(),
                },
            ))
            .unwrap();
        assert!(
            matches!(&deleted, Response::AccessKeys { keys } if keys.len() == 1 && keys[0].key_id == k1.0),
            "{deleted:?}"
        );
        let (status, code) = err(&api, &k1, body);
        assert_eq!((status, code.as_str()), (401, "AuthFailure"));
        assert_eq!(call(&api, &k2, body).0, 200);
        let e = api
            .handle(req_as(
                OWNER,
                Command::DeleteAccessKey {
                    key_id: k1.0.clone(),
                },
            ))
            .unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue", "deleted twice");
    }
    let api = Api {
        core: Mutex::new(core_in(&dir, config())),
        _dir: TempDir::new("ec2-keys-unused2"),
    };
    assert_eq!(
        err(&api, &k1, body).1,
        "AuthFailure",
        "still gone after a restart"
    );
    assert_eq!(call(&api, &k2, body).0, 200);
    assert_eq!(call(&api, &kb, body).0, 200);
}

/// All texts of `<tag>` in `doc`, in order.
fn all<'a>(doc: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    doc.split(&open)
        .skip(1)
        .map(|s| s.split(&close).next().unwrap())
        .collect()
}

/// Issue 16 item 3: tags on groups and instances, durable, in describes and
/// filters; TagSpecification on creation; gone with their resource.
#[test]
fn tags_on_groups_and_instances_survive_a_restart() {
    let dir = TempDir::new("ec2-tags");
    let v = "Version=2016-11-15";
    let k;
    let (web, iid);
    {
        let api = Api {
            core: Mutex::new(core_in(&dir, config())),
            _dir: TempDir::new("ec2-tags-unused"),
        };
        k = key(&api, OWNER);
        let doc = ok(
            &api,
            &k,
            &format!(
                "Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=W\
                 &TagSpecification.1.ResourceType=security-group&TagSpecification.1.Tag.1.Key=env&TagSpecification.1.Tag.1.Value=prod"
            ),
        );
        web = first(&doc, "groupId").to_owned();
        assert_eq!(
            first(&doc, "securityGroupArn"),
            format!("arn:aws:ec2:us-east-1:{OWNER}:security-group/{web}")
        );
        let doc = ok(
            &api,
            &k,
            &format!(
                "Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=1&MaxCount=1&SecurityGroupId.1={web}\
                 &TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=web-1\
                 &TagSpecification.2.ResourceType=volume&TagSpecification.2.Tag.1.Key=ignored"
            ),
        );
        iid = first(&doc, "instanceId").to_owned();
        assert!(
            doc.contains("<tagSet><item><key>Name</key><value>web-1</value></item></tagSet>"),
            "{doc}"
        );
        ok(
            &api,
            &k,
            &format!(
                "Action=CreateTags&{v}&ResourceId.1={web}&ResourceId.2={iid}&Tag.1.Key=team&Tag.1.Value=a&Tag.2.Key=empty"
            ),
        );
        // Bad tags and resources change nothing.
        let kb = key(&api, OTHER);
        let before = api.core.lock().unwrap().dump();
        for (body, code) in [
            (
                format!("Action=CreateTags&ResourceId.1={web}&Tag.1.Key=aws:x&Tag.1.Value=1"),
                "InvalidParameterValue",
            ),
            (
                format!(
                    "Action=CreateTags&ResourceId.1={web}&ResourceId.2=sg-00000000&Tag.1.Key=x"
                ),
                "InvalidGroup.NotFound",
            ),
            (
                "Action=CreateTags&ResourceId.1=vol-1234&Tag.1.Key=x".to_owned(),
                "InvalidID",
            ),
            (
                "Action=CreateTags&ResourceId.1=i-00000000&Tag.1.Key=x".to_owned(),
                "InvalidInstanceID.NotFound",
            ),
            (
                format!("Action=CreateTags&ResourceId.1={web}"),
                "MissingParameter",
            ),
        ] {
            assert_eq!(err(&api, &k, &format!("{body}&{v}")).1, code, "{body}");
        }
        assert_eq!(
            err(
                &api,
                &kb,
                &format!("Action=CreateTags&{v}&ResourceId.1={web}&Tag.1.Key=x")
            )
            .1,
            "InvalidGroup.NotFound",
            "another owner's group"
        );
        assert_eq!(api.core.lock().unwrap().dump(), before);
        let doc = ok(&api, &kb, &format!("Action=DescribeTags&{v}"));
        assert!(!doc.contains("<item>"), "B sees none of A's tags: {doc}");
    }
    // After a restart: describes, filters, DescribeTags.
    let api = Api {
        core: Mutex::new(core_in(&dir, config())),
        _dir: TempDir::new("ec2-tags-unused2"),
    };
    let doc = ok(&api, &k, &format!("Action=DescribeTags&{v}"));
    assert_eq!(
        all(&doc, "resourceId"),
        [
            iid.as_str(),
            iid.as_str(),
            iid.as_str(),
            web.as_str(),
            web.as_str(),
            web.as_str()
        ],
        "{doc}"
    );
    assert_eq!(
        all(&doc, "key"),
        ["Name", "empty", "team", "empty", "env", "team"]
    );
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeTags&{v}&Filter.1.Name=resource-type&Filter.1.Value.1=security-group&Filter.2.Name=key&Filter.2.Value.1=e*"
        ),
    );
    assert_eq!(all(&doc, "key"), ["empty", "env"], "{doc}");
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&GroupId.1={web}"),
    );
    assert!(
        doc.contains("<tagSet><item><key>empty</key><value></value></item><item><key>env</key><value>prod</value></item><item><key>team</key><value>a</value></item></tagSet>"),
        "{doc}"
    );
    let names = |f: &str| {
        let doc = ok(&api, &k, &format!("Action=DescribeSecurityGroups&{v}&{f}"));
        all(&doc, "groupName")
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("Filter.1.Name=tag:env&Filter.1.Value.1=pr*"), ["web"]);
    assert_eq!(
        names("Filter.1.Name=tag-key&Filter.1.Value.1=team"),
        ["web"]
    );
    assert!(names("Filter.1.Name=tag:env&Filter.1.Value.1=dev").is_empty());
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeInstances&{v}&Filter.1.Name=tag:Name&Filter.1.Value.1=web-*"),
    );
    assert_eq!(all(&doc, "instanceId"), [iid.as_str()]);
    // DeleteTags: a key with another value stays; a key alone goes.
    ok(
        &api,
        &k,
        &format!(
            "Action=DeleteTags&{v}&ResourceId.1={web}&Tag.1.Key=env&Tag.1.Value=dev&Tag.2.Key=team"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeTags&{v}&Filter.1.Name=resource-id&Filter.1.Value.1={web}"),
    );
    assert_eq!(all(&doc, "key"), ["empty", "env"], "{doc}");
    // Terminating and deleting take the tags along.
    ok(
        &api,
        &k,
        &format!("Action=TerminateInstances&{v}&InstanceId.1={iid}"),
    );
    ok(
        &api,
        &k,
        &format!("Action=DeleteSecurityGroup&{v}&GroupId.1={web}&GroupId={web}"),
    );
    let doc = ok(&api, &k, &format!("Action=DescribeTags&{v}"));
    assert!(!doc.contains("<item>"), "{doc}");
    assert!(!api.core.lock().unwrap().dump().contains("team"));
}

/// Issue 16 items 4 and 5: descriptions stored and returned, updated in
/// place; rules as objects with `sgr-` ids: described, revoked and modified
/// by id (keeping the id); an egress rule that does not exist answers the
/// AWS error.
#[test]
fn rule_descriptions_and_rule_ids() {
    let api = api("ec2-rules");
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &k,
        &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=W"),
    );
    let web = first(&doc, "groupId").to_owned();
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupId={web}\
             &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=22&IpPermissions.1.ToPort=22\
             &IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.IpRanges.1.Description=office+ssh\
             &IpPermissions.1.IpRanges.2.CidrIp=10.9.0.0/16\
             &IpPermissions.1.Groups.1.GroupName=default&IpPermissions.1.Groups.1.Description=from+default"
        ),
    );
    // Authorize answers the new rules with their ids.
    let ids = all(&doc, "securityGroupRuleId");
    assert_eq!(ids.len(), 3, "{doc}");
    assert!(
        ids.iter().all(|i| i.starts_with("sgr-") && i.len() == 21),
        "{ids:?}"
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&GroupId.1={web}"),
    );
    assert!(
        doc.contains(
            "<item><cidrIp>10.0.0.0/8</cidrIp><description>office ssh</description></item>"
        ),
        "{doc}"
    );
    assert!(
        doc.contains("<item><cidrIp>10.9.0.0/16</cidrIp></item>"),
        "{doc}"
    );
    assert!(
        doc.contains("<groupName>default</groupName><description>from default</description>"),
        "{doc}"
    );
    // The CLI front door sees the same rules.
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroupRules&{v}&Filter.1.Name=group-id&Filter.1.Value.1={web}"
        ),
    );
    // Three ingress rules, and the two default egress rules.
    assert_eq!(all(&doc, "securityGroupRuleId").len(), 5, "{doc}");
    let mut dirs = all(&doc, "isEgress");
    dirs.sort();
    assert_eq!(dirs, ["false", "false", "false", "true", "true"], "{doc}");
    let mut ds = all(&doc, "description");
    ds.sort();
    assert_eq!(ds, ["from default", "office ssh"], "{doc}");
    let ssh = doc
        .split("<item>")
        .find(|i| i.contains("10.0.0.0/8"))
        .map(|i| first(i, "securityGroupRuleId").to_owned())
        .unwrap();
    let wide = doc
        .split("<item>")
        .find(|i| i.contains("10.9.0.0/16"))
        .map(|i| first(i, "securityGroupRuleId").to_owned())
        .unwrap();
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1={ssh}"),
    );
    assert_eq!(all(&doc, "cidrIpv4"), ["10.0.0.0/8"]);
    assert_eq!(
        err(
            &api,
            &k,
            &format!(
                "Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1=sgr-00000000000000000"
            )
        )
        .1,
        "InvalidSecurityGroupRuleId.NotFound"
    );
    // Update descriptions: by permission (a tool's re-run) and by rule id.
    ok(
        &api,
        &k,
        &format!(
            "Action=UpdateSecurityGroupRuleDescriptionsIngress&{v}&GroupId={web}\
             &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=22&IpPermissions.1.ToPort=22\
             &IpPermissions.1.IpRanges.1.CidrIp=10.9.0.0/16&IpPermissions.1.IpRanges.1.Description=vpn"
        ),
    );
    ok(
        &api,
        &k,
        &format!(
            "Action=UpdateSecurityGroupRuleDescriptionsIngress&{v}&GroupId={web}\
             &SecurityGroupRuleDescription.1.SecurityGroupRuleId={ssh}&SecurityGroupRuleDescription.1.Description=admins"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1={ssh}&SecurityGroupRuleId.2={wide}"
        ),
    );
    let mut ds = all(&doc, "description");
    ds.sort();
    assert_eq!(ds, ["admins", "vpn"], "{doc}");
    let before = api.core.lock().unwrap().dump();
    for (body, code) in [
        (
            format!(
                "Action=UpdateSecurityGroupRuleDescriptionsIngress&GroupId={web}&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=23&IpPermissions.1.ToPort=23&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.IpRanges.1.Description=x"
            ),
            "InvalidPermission.NotFound",
        ),
        (
            format!(
                "Action=UpdateSecurityGroupRuleDescriptionsEgress&GroupId={web}&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.IpRanges.1.Description=x"
            ),
            "InvalidPermission.NotFound",
        ),
        (
            "Action=UpdateSecurityGroupRuleDescriptionsEgress&GroupId=sg-00000000".to_owned(),
            "InvalidGroup.NotFound",
        ),
        (
            format!(
                "Action=RevokeSecurityGroupIngress&GroupId={web}&SecurityGroupRuleId.1={ssh}&SecurityGroupRuleId.2=sgr-00000000000000000"
            ),
            "InvalidSecurityGroupRuleId.NotFound",
        ),
        (
            format!(
                "Action=AuthorizeSecurityGroupIngress&GroupId={web}&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=1&IpPermissions.1.ToPort=1&IpPermissions.1.IpRanges.1.CidrIp=1.0.0.0/8&IpPermissions.1.IpRanges.1.Description={}",
                "d".repeat(256)
            ),
            "InvalidParameterValue",
        ),
    ] {
        assert_eq!(err(&api, &k, &format!("{body}&{v}")).1, code, "{body}");
    }
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing changed");
    // Modify by id: the rule changes, its id stays.
    ok(
        &api,
        &k,
        &format!(
            "Action=ModifySecurityGroupRules&{v}&GroupId={web}&SecurityGroupRule.1.SecurityGroupRuleId={ssh}\
             &SecurityGroupRule.1.SecurityGroupRule.IpProtocol=tcp&SecurityGroupRule.1.SecurityGroupRule.FromPort=2222\
             &SecurityGroupRule.1.SecurityGroupRule.ToPort=2222&SecurityGroupRule.1.SecurityGroupRule.CidrIpv4=10.0.0.0/8\
             &SecurityGroupRule.1.SecurityGroupRule.Description=moved"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1={ssh}"),
    );
    assert_eq!(
        (first(&doc, "fromPort"), first(&doc, "description")),
        ("2222", "moved"),
        "{doc}"
    );
    {
        let core = api.core.lock().unwrap();
        let g = core
            .model()
            .group(&filter::model::Owner(OWNER.into()), "web")
            .unwrap();
        assert!(
            g.rules.iter().any(|r| r.ports == Ports::Range(2222, 2222)),
            "enforced: {:?}",
            g.rules
        );
        assert!(
            !g.rules.iter().any(|r| r.ports == Ports::Range(22, 22)
                && r.source == Source::Cidr("10.0.0.0/8".parse().unwrap())),
            "{:?}",
            g.rules
        );
    }
    // Modify to an IPv6 range (issue 15): same id, now `cidrIpv6`.
    ok(
        &api,
        &k,
        &format!(
            "Action=ModifySecurityGroupRules&{v}&GroupId={web}&SecurityGroupRule.1.SecurityGroupRuleId={ssh}\
             &SecurityGroupRule.1.SecurityGroupRule.IpProtocol=tcp&SecurityGroupRule.1.SecurityGroupRule.FromPort=2222\
             &SecurityGroupRule.1.SecurityGroupRule.ToPort=2222&SecurityGroupRule.1.SecurityGroupRule.CidrIpv6=2001:db8::/32\
             &SecurityGroupRule.1.SecurityGroupRule.Description=moved"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1={ssh}"),
    );
    assert_eq!(first(&doc, "cidrIpv6"), "2001:db8::/32", "{doc}");
    assert!(!doc.contains("cidrIpv4"), "{doc}");
    // Revoke by id.
    ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupIngress&{v}&GroupId={web}&SecurityGroupRuleId.1={ssh}&SecurityGroupRuleId.2={wide}"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroupRules&{v}&Filter.1.Name=group-id&Filter.1.Value.1={web}"
        ),
    );
    assert_eq!(all(&doc, "description"), ["from default"], "{doc}");
    // Authorize again: a new id.
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupId={web}&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIp=10.0.0.0/8"
        ),
    );
    assert_ne!(first(&doc, "securityGroupRuleId"), ssh);
}

/// Issue 16 item 7: a repeated ClientToken answers the first launch's
/// instances, also once they are terminated; pagination of both describes.
#[test]
fn client_token_after_termination_and_pagination() {
    let api = api("ec2-paging");
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let run = format!(
        "Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=3&MaxCount=3&ClientToken=tok-paging"
    );
    let doc = ok(&api, &k, &run);
    let mut ids: Vec<String> = all(&doc, "instanceId")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let res = first(&doc, "reservationId").to_owned();
    ok(
        &api,
        &k,
        &format!("Action=TerminateInstances&{v}&InstanceId.1={}", ids[0]),
    );
    let again = ok(&api, &k, &run);
    assert_eq!(first(&again, "reservationId"), res);
    assert_eq!(all(&again, "instanceId"), ids, "{again}");
    assert_eq!(
        all(&again, "name"),
        ["terminated", "running", "running"],
        "{again}"
    );
    assert_eq!(
        api.core.lock().unwrap().model().instances().len(),
        2,
        "nothing launched"
    );
    // Pagination: instances by id, 5 at a time.
    ok(
        &api,
        &k,
        &format!("Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=5&MaxCount=5"),
    );
    ids.remove(0);
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..3 {
        let t = token
            .as_ref()
            .map(|t| format!("&NextToken={t}"))
            .unwrap_or_default();
        let doc = ok(
            &api,
            &k,
            &format!("Action=DescribeInstances&{v}&MaxResults=5{t}"),
        );
        let page = all(&doc, "instanceId");
        assert!(page.len() <= 5, "{doc}");
        seen.extend(page.into_iter().map(str::to_owned));
        token = doc
            .contains("<nextToken>")
            .then(|| first(&doc, "nextToken").to_owned());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "none twice: {seen:?}");
    assert!(ids.iter().all(|i| seen.contains(i)), "{seen:?}");
    // Groups: 6 of them, 5 a page.
    for n in 0..5 {
        ok(
            &api,
            &k,
            &format!("Action=CreateSecurityGroup&{v}&GroupName=g{n}&GroupDescription=G"),
        );
    }
    // The groups' own names (not those of source groups).
    let names = |doc: &str| -> Vec<String> {
        let parts: Vec<&str> = doc.split("</groupName><groupDescription>").collect();
        parts[..parts.len() - 1]
            .iter()
            .map(|s| s.rsplit("<groupName>").next().unwrap().to_owned())
            .collect()
    };
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&MaxResults=5"),
    );
    assert_eq!(names(&doc), ["default", "g0", "g1", "g2", "g3"]);
    let t = first(&doc, "nextToken").to_owned();
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&MaxResults=5&NextToken={t}"),
    );
    assert_eq!(names(&doc), ["g4"]);
    assert!(!doc.contains("<nextToken>"));
    for (body, code) in [
        (
            "Action=DescribeSecurityGroups&MaxResults=4",
            "InvalidParameterValue",
        ),
        (
            "Action=DescribeSecurityGroups&MaxResults=5&GroupName.1=g1",
            "InvalidParameterCombination",
        ),
        (
            "Action=DescribeInstances&MaxResults=5&NextToken=zz",
            "InvalidPaginationToken",
        ),
    ] {
        assert_eq!(err(&api, &k, &format!("{body}&{v}")).1, code, "{body}");
    }
}

/// Rules the socket front door adds get `sgr-` ids too, and every id and
/// description is the same after a restart.
#[test]
fn rule_ids_of_both_front_doors_survive_a_restart() {
    let dir = TempDir::new("ec2-rule-ids");
    let v = "Version=2016-11-15";
    let (k, before);
    {
        let api = Api {
            core: Mutex::new(core_in(&dir, config())),
            _dir: TempDir::new("ec2-rule-ids-unused"),
        };
        k = key(&api, OWNER);
        api.handle(req_as(
            OWNER,
            Command::Authorize {
                egress: false,
                group: GroupRef::Name("default".into()),
                permissions: vec![crate::api::Permission {
                    proto: Some("tcp".into()),
                    ports: Some("22".into()),
                    cidrs: vec!["192.168.1.10/32".into()],
                    ..crate::api::Permission::default()
                }],
            },
        ))
        .unwrap();
        ok(
            &api,
            &k,
            &format!(
                "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=default\
                 &IpPermissions.1.IpProtocol=udp&IpPermissions.1.FromPort=53&IpPermissions.1.ToPort=53\
                 &IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.IpRanges.1.Description=dns"
            ),
        );
        before = ok(&api, &k, &format!("Action=DescribeSecurityGroupRules&{v}"));
        // default's own rule, the CLI's and the API's, and the two default
        // egress rules: five ids.
        assert_eq!(all(&before, "securityGroupRuleId").len(), 5, "{before}");
    }
    let api = Api {
        core: Mutex::new(core_in(&dir, config())),
        _dir: TempDir::new("ec2-rule-ids-unused2"),
    };
    let after = ok(&api, &k, &format!("Action=DescribeSecurityGroupRules&{v}"));
    let body = |d: &str| d.split("<securityGroupRuleSet>").nth(1).unwrap().to_owned();
    assert_eq!(body(&after), body(&before));
    assert_eq!(all(&after, "description"), ["dns"]);
}

/// Issue 15: AuthorizeSecurityGroupEgress and RevokeSecurityGroupEgress in
/// both shapes, by name and id; `ipPermissionsEgress` is the group's egress
/// rule set; errors as EC2 gives them, each leaving the state unchanged.
#[test]
fn egress_rules_in_both_shapes_described_and_their_errors() {
    let dir = TempDir::new("ec2-egress");
    let mut cfg = config();
    cfg.limits.rules_per_group = 3;
    let api = Api {
        core: Mutex::new(core_in(&dir, cfg)),
        _dir: dir,
    };
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let web_id = first(
        &ok(
            &api,
            &k,
            &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=Web"),
        ),
        "groupId",
    )
    .to_owned();
    let db_id = first(
        &ok(
            &api,
            &k,
            &format!("Action=CreateSecurityGroup&{v}&GroupName=db&GroupDescription=Db"),
        ),
        "groupId",
    )
    .to_owned();
    let egress_of = |api: &Api| {
        let core = api.core.lock().unwrap();
        core.model()
            .group(&filter::model::Owner(OWNER.into()), "web")
            .unwrap()
            .egress
            .clone()
    };
    let describe = |api: &Api| {
        let doc = ok(
            api,
            &k,
            &format!("Action=DescribeSecurityGroups&{v}&GroupId.1={web_id}"),
        );
        first(&doc, "securityGroupInfo").to_owned()
    };
    // A new group: the default egress rules (0.0.0.0/0 and ::/0), described
    // as EC2 does: one permission with both ranges.
    assert_eq!(egress_of(&api), filter::model::default_egress());
    assert!(
        describe(&api).contains("<ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><groups></groups><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges><ipv6Ranges><item><cidrIpv6>::/0</cidrIpv6></item></ipv6Ranges><prefixListIds/></item></ipPermissionsEgress>"),
        "{}",
        describe(&api)
    );

    // Revoke the default permission, both ranges (indexed shape, by id): no
    // egress rules left.
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupEgress&{v}&GroupId={web_id}&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0&IpPermissions.1.Ipv6Ranges.1.CidrIpv6=%3A%3A%2F0"
        ),
    );
    assert!(doc.contains("<RevokeSecurityGroupEgressResponse"), "{doc}");
    assert!(egress_of(&api).is_empty());
    assert!(
        describe(&api).contains("<ipPermissionsEgress></ipPermissionsEgress>"),
        "{}",
        describe(&api)
    );
    // Indexed shape by id: a CIDR and a destination group; flat shape by
    // name: a second CIDR on the same port (one item, two ranges).
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupEgress&{v}&GroupId={web_id}\
             &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=443&IpPermissions.1.ToPort=443\
             &IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0%2F8\
             &IpPermissions.2.IpProtocol=tcp&IpPermissions.2.FromPort=5432&IpPermissions.2.ToPort=5432\
             &IpPermissions.2.Groups.1.GroupId={db_id}"
        ),
    );
    assert!(
        doc.contains("<AuthorizeSecurityGroupEgressResponse") && first(&doc, "return") == "true",
        "{doc}"
    );
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupEgress&{v}&GroupName=web&IpProtocol=tcp&FromPort=443&ToPort=443&CidrIp=192.168.0.0/16"
        ),
    );
    let item = describe(&api);
    let egress = first(&item, "ipPermissionsEgress");
    assert_eq!(
        egress,
        format!(
            "<item><ipProtocol>tcp</ipProtocol><fromPort>443</fromPort><toPort>443</toPort><groups></groups>\
             <ipRanges><item><cidrIp>10.0.0.0/8</cidrIp></item><item><cidrIp>192.168.0.0/16</cidrIp></item></ipRanges>\
             <ipv6Ranges/><prefixListIds/></item>\
             <item><ipProtocol>tcp</ipProtocol><fromPort>5432</fromPort><toPort>5432</toPort>\
             <groups><item><userId>{OWNER}</userId><groupId>{db_id}</groupId><groupName>db</groupName></item></groups>\
             <ipRanges></ipRanges><ipv6Ranges/><prefixListIds/></item>"
        ),
        "{item}"
    );
    // Ingress is untouched, and the same rule as ingress stays apart.
    assert!(item.contains("<ipPermissions></ipPermissions>"), "{item}");
    // Egress filters see egress rules, ingress filters do not (groups by
    // their descriptions: a group name also appears as a destination).
    let found = |filter: &str| {
        let doc = ok(
            &api,
            &k,
            &format!("Action=DescribeSecurityGroups&{v}&{filter}"),
        );
        all(&doc, "groupDescription")
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        found(&format!(
            "Filter.1.Name=egress.ip-permission.group-id&Filter.1.Value.1={db_id}"
        )),
        ["Web"]
    );
    assert_eq!(
        found("Filter.1.Name=egress.ip-permission.cidr&Filter.1.Value.1=192.168.*"),
        ["Web"]
    );
    assert!(
        found("Filter.1.Name=ip-permission.cidr&Filter.1.Value.1=10.0.0.0/8").is_empty(),
        "an egress CIDR is no ingress permission"
    );

    // Errors: each leaves the state as it was.
    let before = api.core.lock().unwrap().dump();
    let cases = [
        (
            "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpProtocol=tcp&FromPort=443&ToPort=443&CidrIp=10.0.0.0/8".to_owned(),
            "InvalidPermission.Duplicate",
        ),
        (
            "Action=RevokeSecurityGroupEgress&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0/0".to_owned(),
            "InvalidPermission.NotFound",
        ),
        (
            // The limit counts egress rules apart from ingress: 3 + 1 > 3.
            "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpProtocol=udp&FromPort=53&ToPort=53&CidrIp=10.0.0.0/8".to_owned(),
            "RulesPerSecurityGroupLimitExceeded",
        ),
        (
            "Action=AuthorizeSecurityGroupEgress&GroupId=sg-00000000&IpProtocol=-1&CidrIp=10.0.0.0/8".to_owned(),
            "InvalidGroup.NotFound",
        ),
        (
            "Action=RevokeSecurityGroupEgress&GroupId=badcompany".to_owned(),
            "InvalidGroup.NotFound",
        ),
        (
            "Action=RevokeSecurityGroupEgress&GroupName=web".to_owned(),
            "MissingParameter",
        ),
        (
            "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpProtocol=tcp&FromPort=1&ToPort=70000&CidrIp=10.0.0.0/8".to_owned(),
            "InvalidParameterValue",
        ),
        (
            format!(
                "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=10.9.0.0/16&IpPermissions.1.IpRanges.1.Description={}",
                "d".repeat(256)
            ),
            "InvalidParameterValue",
        ),
        (
            format!("Action=RevokeSecurityGroupEgress&GroupId={web_id}&SecurityGroupRuleId.1=sgr-0123456789abcdef0"),
            "InvalidSecurityGroupRuleId.NotFound",
        ),
    ];
    for (body, want) in &cases {
        let (status, code) = err(&api, &k, &format!("{body}&{v}"));
        assert_eq!((status, code.as_str()), (400, *want), "{body}");
    }
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing changed");
    // The ingress limit is its own: three ingress rules still fit.
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=1&IpPermissions.1.ToPort=3&IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.IpRanges.2.CidrIp=10.1.0.0/16&IpPermissions.1.IpRanges.3.CidrIp=10.2.0.0/16"
        ),
    );
    // Revoke in the flat shape, and back to the default rule.
    for body in [
        "Action=RevokeSecurityGroupEgress&GroupName=web&IpProtocol=tcp&FromPort=443&ToPort=443&CidrIp=10.0.0.0/8".to_owned(),
        "Action=RevokeSecurityGroupEgress&GroupName=web&IpProtocol=tcp&FromPort=443&ToPort=443&CidrIp=192.168.0.0/16".to_owned(),
        "Action=RevokeSecurityGroupEgress&GroupName=web&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=5432&IpPermissions.1.ToPort=5432&IpPermissions.1.Groups.1.GroupName=db".to_owned(),
        "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0/0&IpPermissions.1.Ipv6Ranges.1.CidrIpv6=::/0".to_owned(),
    ] {
        ok(&api, &k, &format!("{body}&{v}"));
    }
    assert_eq!(egress_of(&api), filter::model::default_egress());
}

/// Egress rules have `sgr-` ids as ingress rules do: a new group's default
/// egress rules are described with `isEgress` true; authorize answers the
/// new egress rules with ids and descriptions; descriptions update by id and
/// by permission; ModifySecurityGroupRules keeps an egress rule's id and
/// direction; RevokeSecurityGroupEgress revokes by id; an id of the other
/// direction is not found (nothing changes); every id survives a restart.
#[test]
fn egress_rules_have_rule_ids_like_ingress_rules() {
    let dir = TempDir::new("ec2-egress-ids");
    let v = "Version=2016-11-15";
    let open = |dir: &TempDir| Api {
        core: Mutex::new(core_in(dir, config())),
        _dir: TempDir::new("ec2-egress-ids-unused"),
    };
    let api = open(&dir);
    let k = key(&api, OWNER);
    let web = first(
        &ok(
            &api,
            &k,
            &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=W"),
        ),
        "groupId",
    )
    .to_owned();
    let rules_of = |api: &Api| {
        ok(
            api,
            &k,
            &format!(
                "Action=DescribeSecurityGroupRules&{v}&Filter.1.Name=group-id&Filter.1.Value.1={web}"
            ),
        )
    };
    // (id, isEgress, destination) of each item.
    let items = |doc: &str| -> Vec<(String, String, String)> {
        doc.split("<item><securityGroupRuleId>")
            .skip(1)
            .map(|i| {
                let dest = if i.contains("<cidrIpv4>") {
                    first(i, "cidrIpv4")
                } else if i.contains("<cidrIpv6>") {
                    first(i, "cidrIpv6")
                } else {
                    first(i, "groupName")
                };
                (
                    i.split('<').next().unwrap().to_owned(),
                    first(i, "isEgress").to_owned(),
                    dest.to_owned(),
                )
            })
            .collect()
    };
    let egress_of = |api: &Api| {
        let core = api.core.lock().unwrap();
        let g = core
            .model()
            .group(&filter::model::Owner(OWNER.into()), "web")
            .unwrap();
        (g.rules.clone(), g.egress.clone())
    };
    // The default egress rules, with ids.
    let doc = rules_of(&api);
    let mut got = items(&doc);
    got.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(got.len(), 2, "{doc}");
    assert!(
        got.iter()
            .all(|(id, e, _)| id.starts_with("sgr-") && id.len() == 21 && e == "true"),
        "{doc}"
    );
    assert_eq!(
        got.iter().map(|g| g.2.as_str()).collect::<Vec<_>>(),
        ["0.0.0.0/0", "::/0"]
    );
    assert_ne!(got[0].0, got[1].0);
    let all4 = got[0].0.clone();
    let all6 = got[1].0.clone();
    // Authorize egress: the new rule with its id and description.
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupEgress&{v}&GroupId={web}\
             &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=443&IpPermissions.1.ToPort=443\
             &IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8&IpPermissions.1.IpRanges.1.Description=tls+out"
        ),
    );
    let set = first(&doc, "securityGroupRuleSet");
    assert_eq!(items(set).len(), 1, "{doc}");
    let tls = items(set)[0].0.clone();
    assert_eq!(
        (first(set, "isEgress"), first(set, "description")),
        ("true", "tls out"),
        "{doc}"
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&GroupId.1={web}"),
    );
    assert!(
        first(&doc, "ipPermissionsEgress")
            .contains("<item><cidrIp>10.0.0.0/8</cidrIp><description>tls out</description></item>"),
        "{doc}"
    );
    // The same rule as ingress is another rule with another id.
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupId={web}&IpProtocol=tcp&FromPort=443&ToPort=443&CidrIp=10.0.0.0/8"
        ),
    );
    let doc = rules_of(&api);
    let got = items(&doc);
    assert_eq!(got.len(), 4, "{doc}");
    let ingress: Vec<_> = got.iter().filter(|g| g.1 == "false").collect();
    assert_eq!(ingress.len(), 1, "{doc}");
    let https_in = ingress[0].0.clone();
    assert!(![&all4, &all6, &tls].contains(&&https_in));
    // An id of the other direction is not found, and nothing changes.
    let before = api.core.lock().unwrap().dump();
    for body in [
        format!("Action=RevokeSecurityGroupIngress&GroupId={web}&SecurityGroupRuleId.1={tls}"),
        format!("Action=RevokeSecurityGroupEgress&GroupId={web}&SecurityGroupRuleId.1={https_in}"),
        format!(
            "Action=RevokeSecurityGroupEgress&GroupId={web}&SecurityGroupRuleId.1={tls}&SecurityGroupRuleId.2=sgr-00000000000000000"
        ),
        format!(
            "Action=UpdateSecurityGroupRuleDescriptionsEgress&GroupId={web}&SecurityGroupRuleDescription.1.SecurityGroupRuleId={https_in}&SecurityGroupRuleDescription.1.Description=x"
        ),
    ] {
        assert_eq!(
            err(&api, &k, &format!("{body}&{v}")).1,
            "InvalidSecurityGroupRuleId.NotFound",
            "{body}"
        );
    }
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing changed");
    // Descriptions of egress rules: by permission and by id.
    ok(
        &api,
        &k,
        &format!(
            "Action=UpdateSecurityGroupRuleDescriptionsEgress&{v}&GroupId={web}\
             &IpPermissions.1.IpProtocol=-1&IpPermissions.1.Ipv6Ranges.1.CidrIpv6=::/0&IpPermissions.1.Ipv6Ranges.1.Description=all+v6"
        ),
    );
    ok(
        &api,
        &k,
        &format!(
            "Action=UpdateSecurityGroupRuleDescriptionsEgress&{v}&GroupId={web}\
             &SecurityGroupRuleDescription.1.SecurityGroupRuleId={tls}&SecurityGroupRuleDescription.1.Description=https"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!(
            "Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1={all6}&SecurityGroupRuleId.2={tls}"
        ),
    );
    let mut ds = all(&doc, "description");
    ds.sort();
    assert_eq!(ds, ["all v6", "https"], "{doc}");
    // Modify an egress rule by id: it stays egress and keeps its id.
    ok(
        &api,
        &k,
        &format!(
            "Action=ModifySecurityGroupRules&{v}&GroupId={web}&SecurityGroupRule.1.SecurityGroupRuleId={tls}\
             &SecurityGroupRule.1.SecurityGroupRule.IpProtocol=tcp&SecurityGroupRule.1.SecurityGroupRule.FromPort=8443\
             &SecurityGroupRule.1.SecurityGroupRule.ToPort=8443&SecurityGroupRule.1.SecurityGroupRule.CidrIpv4=10.0.0.0/8\
             &SecurityGroupRule.1.SecurityGroupRule.Description=alt"
        ),
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroupRules&{v}&SecurityGroupRuleId.1={tls}"),
    );
    assert_eq!(
        (
            first(&doc, "isEgress"),
            first(&doc, "fromPort"),
            first(&doc, "description")
        ),
        ("true", "8443", "alt"),
        "{doc}"
    );
    let (ingress, egress) = egress_of(&api);
    assert!(
        egress.iter().any(|r| r.ports == Ports::Range(8443, 8443))
            && !egress.iter().any(|r| r.ports == Ports::Range(443, 443)),
        "enforced: {egress:?}"
    );
    assert_eq!(ingress.len(), 1, "ingress untouched: {ingress:?}");
    assert_eq!(ingress[0].ports, Ports::Range(443, 443));
    // Every id and description is the same after a restart.
    let before = rules_of(&api);
    drop(api);
    let api = open(&dir);
    let after = rules_of(&api);
    let body = |d: &str| first(d, "securityGroupRuleSet").to_owned();
    assert_eq!(body(&after), body(&before));
    // Revoke egress rules by id: the IPv4 default and the modified one.
    ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupEgress&{v}&GroupId={web}&SecurityGroupRuleId.1={all4}&SecurityGroupRuleId.2={tls}"
        ),
    );
    let (ingress, egress) = egress_of(&api);
    assert_eq!(egress, vec![filter::model::default_egress_rule6()]);
    assert_eq!(ingress.len(), 1);
    let got = items(&rules_of(&api));
    let mut ids: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    ids.sort();
    let mut want = vec![all6.as_str(), https_in.as_str()];
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn describe_instances_carries_the_ipv6_address() {
    let dir = TempDir::new("ec2-ip6");
    let mut cfg = config();
    let p: ipnet::Ipv6Net = "fd00:aa:bb:cc::/64".parse().unwrap();
    cfg.subnet6 = Some(p);
    let api = Api {
        core: Mutex::new(core_in(&dir, cfg)),
        _dir: dir,
    };
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let doc = ok(
        &api,
        &k,
        &format!("Action=RunInstances&{v}&ImageId=ami-eca54085&MinCount=1&MaxCount=1"),
    );
    let iid = first(&doc, "instanceId").to_owned();
    let doc = ok(&api, &k, &format!("Action=DescribeInstances&{v}"));
    let want = filter::model::eui64_address(p, filter::model::instance_mac(&iid));
    assert_eq!(first(&doc, "ipv6Address"), want.to_string(), "{doc}");
    assert!(
        doc.contains(&format!(
            "<ipv6AddressesSet><item><ipv6Address>{want}</ipv6Address></item></ipv6AddressesSet>"
        )),
        "{doc}"
    );
}

/// Issue 15: IPv6 ranges through the Query API: `Ipv6Ranges` (indexed) and
/// `CidrIpv6` (flat) for ingress and egress, icmpv6 as `58` with type/code,
/// `ipv6Ranges` in describe, the cidr filters, and mixed families refused
/// naming the value, leaving the state unchanged.
#[test]
fn ipv6_ranges_in_both_shapes_described_filtered_and_their_errors() {
    use filter::model::{Ports, Proto, Rule, Source};
    let dir = TempDir::new("ec2-v6ranges");
    let api = Api {
        core: Mutex::new(core_in(&dir, config())),
        _dir: dir,
    };
    let k = key(&api, OWNER);
    let v = "Version=2016-11-15";
    let web_id = first(
        &ok(
            &api,
            &k,
            &format!("Action=CreateSecurityGroup&{v}&GroupName=web&GroupDescription=Web"),
        ),
        "groupId",
    )
    .to_owned();
    let group = |api: &Api| {
        let core = api.core.lock().unwrap();
        core.model()
            .group(&filter::model::Owner(OWNER.into()), "web")
            .unwrap()
            .clone()
    };
    let net6 = |s: &str| Source::Cidr6(s.parse().unwrap());
    // Ingress, indexed shape: one permission with an IPv4 and two IPv6
    // ranges (one described); icmpv6 by number with type/code.
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupId={web_id}\
             &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=22&IpPermissions.1.ToPort=22\
             &IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8\
             &IpPermissions.1.Ipv6Ranges.1.CidrIpv6=2001:db8::7/32\
             &IpPermissions.1.Ipv6Ranges.2.CidrIpv6=fd00::/8&IpPermissions.1.Ipv6Ranges.2.Description=lab\
             &IpPermissions.2.IpProtocol=58&IpPermissions.2.FromPort=128&IpPermissions.2.ToPort=-1\
             &IpPermissions.2.Ipv6Ranges.1.CidrIpv6=::/0"
        ),
    );
    // Ingress, flat shape: CidrIpv6 with icmpv6 by name.
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupIngress&{v}&GroupName=web&IpProtocol=icmpv6&FromPort=1&ToPort=4&CidrIpv6=2001:db8:1::/48"
        ),
    );
    let g = group(&api);
    let tcp22 = |source| Rule {
        proto: Proto::Tcp,
        ports: Ports::Range(22, 22),
        source,
    };
    assert_eq!(
        g.rules,
        vec![
            tcp22(Source::Cidr("10.0.0.0/8".parse().unwrap())),
            tcp22(net6("2001:db8::/32")),
            tcp22(net6("fd00::/8")),
            Rule {
                proto: Proto::Icmpv6,
                ports: Ports::Icmp {
                    ty: Some(128),
                    code: None
                },
                source: net6("::/0"),
            },
            Rule {
                proto: Proto::Icmpv6,
                ports: Ports::Icmp {
                    ty: Some(1),
                    code: Some(4)
                },
                source: net6("2001:db8:1::/48"),
            },
        ]
    );
    // Egress: the flat shape revokes the default's IPv6 half alone, the
    // indexed shape adds an IPv6 destination.
    ok(
        &api,
        &k,
        &format!(
            "Action=RevokeSecurityGroupEgress&{v}&GroupId={web_id}&IpProtocol=-1&CidrIpv6=::/0"
        ),
    );
    ok(
        &api,
        &k,
        &format!(
            "Action=AuthorizeSecurityGroupEgress&{v}&GroupId={web_id}\
             &IpPermissions.1.IpProtocol=udp&IpPermissions.1.FromPort=53&IpPermissions.1.ToPort=53\
             &IpPermissions.1.Ipv6Ranges.1.CidrIpv6=2001:4860::/32"
        ),
    );
    assert_eq!(
        group(&api).egress,
        vec![
            filter::model::default_egress_rule(),
            Rule {
                proto: Proto::Udp,
                ports: Ports::Range(53, 53),
                source: net6("2001:4860::/32"),
            }
        ]
    );
    let doc = ok(
        &api,
        &k,
        &format!("Action=DescribeSecurityGroups&{v}&GroupId.1={web_id}"),
    );
    assert_eq!(
        first(&doc, "ipPermissions"),
        "<item><ipProtocol>tcp</ipProtocol><fromPort>22</fromPort><toPort>22</toPort><groups></groups>\
         <ipRanges><item><cidrIp>10.0.0.0/8</cidrIp></item></ipRanges>\
         <ipv6Ranges><item><cidrIpv6>2001:db8::/32</cidrIpv6></item><item><cidrIpv6>fd00::/8</cidrIpv6><description>lab</description></item></ipv6Ranges>\
         <prefixListIds/></item>\
         <item><ipProtocol>58</ipProtocol><fromPort>128</fromPort><toPort>-1</toPort><groups></groups><ipRanges></ipRanges>\
         <ipv6Ranges><item><cidrIpv6>::/0</cidrIpv6></item></ipv6Ranges><prefixListIds/></item>\
         <item><ipProtocol>58</ipProtocol><fromPort>1</fromPort><toPort>4</toPort><groups></groups><ipRanges></ipRanges>\
         <ipv6Ranges><item><cidrIpv6>2001:db8:1::/48</cidrIpv6></item></ipv6Ranges><prefixListIds/></item>",
        "{doc}"
    );
    assert_eq!(
        first(&doc, "ipPermissionsEgress"),
        "<item><ipProtocol>-1</ipProtocol><groups></groups><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges><ipv6Ranges/><prefixListIds/></item>\
         <item><ipProtocol>udp</ipProtocol><fromPort>53</fromPort><toPort>53</toPort><groups></groups><ipRanges></ipRanges>\
         <ipv6Ranges><item><cidrIpv6>2001:4860::/32</cidrIpv6></item></ipv6Ranges><prefixListIds/></item>",
        "{doc}"
    );
    // Filters: cidr matches both families, ipv6-cidr IPv6 only; the protocol
    // filter sees icmpv6 as 58.
    let found = |filter: &str| {
        let doc = ok(
            &api,
            &k,
            &format!("Action=DescribeSecurityGroups&{v}&{filter}"),
        );
        all(&doc, "groupId").contains(&web_id.as_str())
    };
    for (filter, want) in [
        ("ip-permission.cidr&Filter.1.Value.1=fd00::/8", true),
        ("ip-permission.ipv6-cidr&Filter.1.Value.1=2001:db8:*", true),
        ("ip-permission.ipv6-cidr&Filter.1.Value.1=10.0.0.0/8", false),
        ("ip-permission.protocol&Filter.1.Value.1=58", true),
        (
            "egress.ip-permission.cidr&Filter.1.Value.1=2001:4860::/32",
            true,
        ),
        (
            "egress.ip-permission.ipv6-cidr&Filter.1.Value.1=::/0",
            false,
        ),
        (
            "ip-permission.ipv6-cidr&Filter.1.Value.1=2001:4860::/32",
            false,
        ),
    ] {
        assert_eq!(found(&format!("Filter.1.Name={filter}")), want, "{filter}");
    }

    // Errors: each names the bad value and leaves the state unchanged.
    let before = api.core.lock().unwrap().dump();
    let cases = [
        // Mixed families: icmp (IPv4) with an IPv6 range, icmpv6 with IPv4.
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpPermissions.1.IpProtocol=icmp&IpPermissions.1.FromPort=8&IpPermissions.1.ToPort=0&IpPermissions.1.Ipv6Ranges.1.CidrIpv6=2001:db8::/32",
            "InvalidParameterValue",
            "2001:db8::/32",
        ),
        (
            "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpProtocol=58&FromPort=128&ToPort=0&CidrIp=10.0.0.0/8",
            "InvalidParameterValue",
            "10.0.0.0/8",
        ),
        // A range of the other family in each field.
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpPermissions.1.IpProtocol=-1&IpPermissions.1.Ipv6Ranges.1.CidrIpv6=10.0.0.0/8",
            "InvalidParameterValue",
            "10.0.0.0/8",
        ),
        (
            "Action=AuthorizeSecurityGroupEgress&GroupName=web&IpProtocol=-1&CidrIp=::/0",
            "InvalidParameterValue",
            "::/0",
        ),
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpProtocol=-1&CidrIpv6=2001:db8::1",
            "InvalidParameterValue",
            "2001:db8::1",
        ),
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpProtocol=-1&CidrIpv6=2001:db8::/200",
            "InvalidParameterValue",
            "2001:db8::/200",
        ),
        // Already there / not there.
        (
            "Action=AuthorizeSecurityGroupIngress&GroupName=web&IpProtocol=tcp&FromPort=22&ToPort=22&CidrIpv6=fd00::/8",
            "InvalidPermission.Duplicate",
            "fd00::/8",
        ),
        (
            "Action=RevokeSecurityGroupEgress&GroupName=web&IpProtocol=-1&CidrIpv6=::/0",
            "InvalidPermission.NotFound",
            "::/0",
        ),
    ];
    for (body, want, value) in cases {
        let (status, body_text) = call(&api, &k, &format!("{body}&{v}"));
        assert_eq!(status, 400, "{body}: {body_text}");
        assert_eq!(first(&body_text, "Code"), want, "{body}: {body_text}");
        assert!(
            first(&body_text, "Message").contains(value),
            "{body}: {body_text}"
        );
    }
    assert_eq!(api.core.lock().unwrap().dump(), before, "nothing changed");
}
