//! XML of EC2 Query API responses and errors.
//!
//! Contract:
//! * [`Xml`] writes elements with text escaped (`& < > " '`; control
//!   characters other than tab/newline, which XML 1.0 cannot carry, become
//!   `?`), so no value a user chose can change the document's structure.
//! * Responses are `<ActionResponse xmlns="http://ec2.amazonaws.com/doc/VERSION/">`
//!   with `<requestId>` first; errors are
//!   `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>`
//!   (`RequestID` spelled so: botocore and boto read it).

use crate::api::ErrorCode;

/// The API version whose namespace answers carry when the client sent none we
/// recognise.
pub const DEFAULT_VERSION: &str = "2016-11-15";

/// Escape text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A small XML writer.
#[derive(Debug, Default)]
pub struct Xml {
    out: String,
}

impl Xml {
    pub fn new() -> Xml {
        Xml {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        }
    }

    pub fn open(&mut self, tag: &str) -> &mut Self {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
        self
    }

    pub fn open_ns(&mut self, tag: &str, ns: &str) -> &mut Self {
        self.out
            .push_str(&format!("<{tag} xmlns=\"{}\">", escape(ns)));
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
        self
    }

    /// `<tag>text</tag>`.
    pub fn elem(&mut self, tag: &str, text: &str) -> &mut Self {
        self.open(tag);
        self.out.push_str(&escape(text));
        self.close(tag)
    }

    /// `<tag/>`.
    pub fn empty(&mut self, tag: &str) -> &mut Self {
        self.out.push_str(&format!("<{tag}/>"));
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The namespace of API `version` (`YYYY-MM-DD`, else [`DEFAULT_VERSION`]).
pub fn namespace(version: Option<&str>) -> String {
    let v = version
        .filter(|v| {
            v.len() == 10
                && v.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        })
        .unwrap_or(DEFAULT_VERSION);
    format!("http://ec2.amazonaws.com/doc/{v}/")
}

/// An error document.
pub fn error(code: ErrorCode, message: &str, request_id: &str) -> String {
    let mut x = Xml::new();
    x.open("Response")
        .open("Errors")
        .open("Error")
        .elem("Code", code.as_str())
        .elem("Message", message)
        .close("Error")
        .close("Errors")
        .elem("RequestID", request_id)
        .close("Response");
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_break_the_document() {
        assert_eq!(
            escape("a<b>&\"c'\u{1}\td"),
            "a&lt;b&gt;&amp;&quot;c&apos;?\td"
        );
        let mut x = Xml::new();
        x.open_ns(
            "CreateSecurityGroupResponse",
            &namespace(Some("2014-10-01")),
        )
        .elem("requestId", "r1")
        .elem(
            "groupDescription",
            "</groupDescription><return>false</return>",
        )
        .empty("ipPermissions")
        .close("CreateSecurityGroupResponse");
        let doc = x.finish();
        assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CreateSecurityGroupResponse xmlns=\"http://ec2.amazonaws.com/doc/2014-10-01/\"><requestId>r1</requestId>"));
        assert!(doc.contains("&lt;/groupDescription&gt;&lt;return&gt;false"));
        assert_eq!(doc.matches("<return>").count(), 0);
        assert!(doc.ends_with("<ipPermissions/></CreateSecurityGroupResponse>"));
    }

    #[test]
    fn namespace_accepts_only_dates() {
        assert_eq!(
            namespace(Some("2016-11-15")),
            "http://ec2.amazonaws.com/doc/2016-11-15/"
        );
        assert_eq!(
            namespace(Some("\"><x")),
            "http://ec2.amazonaws.com/doc/2016-11-15/"
        );
        assert_eq!(namespace(None), "http://ec2.amazonaws.com/doc/2016-11-15/");
    }

    #[test]
    fn error_document_shape() {
        assert_eq!(
            error(ErrorCode::InvalidGroupNotFound, "no <group>", "id-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>InvalidGroup.NotFound</Code><Message>no &lt;group&gt;</Message></Error></Errors><RequestID>id-1</RequestID></Response>"
        );
    }
}
