//! Owned element trees for stanzas and stream-level elements, and their serialisation.

use super::text::{escape_attr, escape_text};
use super::{NS_DIALBACK, NS_STREAMS};

/// One element tree (a stanza or a stream-level element such as `<features/>`, `<starttls/>`
/// or `<db:result/>`), with its name resolved to (local name, namespace).
///
/// Attributes keep their qualified names (`xml:lang`, `to`). Namespace declarations are not
/// kept as attributes, except that an element with a prefixed attribute (other than `xml:`)
/// carries the `xmlns:prefix` declaration it needs, so it can be written out on its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    name: String,
    ns: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

/// A child of an [`Element`]: an element or a run of text (adjacent text is always merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, with references decoded; CDATA sections are folded in.
    Text(String),
}

impl Element {
    /// An empty element `name` in namespace `ns` (`""` for no namespace).
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element { name: name.into(), ns: ns.into(), attrs: Vec::new(), children: Vec::new() }
    }

    /// An element from already-checked parts; the decoder's constructor.
    pub(super) fn from_parts(name: String, ns: String, attrs: Vec<(String, String)>) -> Self {
        Element { name, ns, attrs, children: Vec::new() }
    }

    /// Builder form of [`set_attr`](Self::set_attr).
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`push_child`](Self::push_child).
    pub fn with_child(mut self, child: Element) -> Self {
        self.push_child(child);
        self
    }

    /// Builder form of [`push_text`](Self::push_text).
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    /// Sets attribute `name` (a qualified name) to `value`, replacing any earlier value. The
    /// element's namespace comes from [`ns`](Self::ns); an `xmlns` attribute is never written.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.attrs.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes attribute `name`, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|(n, _)| n == name)?;
        Some(self.attrs.remove(i).1)
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Appends text, merging it with a preceding text node; empty text adds nothing.
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(last)) => last.push_str(&text),
            _ => self.children.push(Node::Text(text)),
        }
    }

    /// The local name, e.g. `message` for `<message/>` and `result` for `<db:result/>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace URI (`""` if the element has none).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Whether this is element `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// All attributes as (qualified name, decoded value), in document order.
    pub fn attrs(&self) -> &[(String, String)] {
        &self.attrs
    }

    /// The value of attribute `name` (a qualified name such as `to` or `xml:lang`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// All children, elements and text, in document order.
    pub fn children(&self) -> &[Node] {
        &self.children
    }

    /// The child elements, skipping text.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element `name` in namespace `ns`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// The concatenated direct text children (not descendants' text).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialises the element so it means the same in any context: the root always declares
    /// its namespace, descendants only where theirs differs from their parent's.
    ///
    /// Elements in the streams and dialback namespaces are written with their conventional
    /// `stream:`/`db:` prefixes (declared on the element), because some servers match those
    /// qualified names literally.
    pub fn write_to(&self, out: &mut String) {
        self.write_root(None, out);
    }

    /// Serialises the element as a direct child of a stream whose header is
    /// [`stream_header`](super::stream_header)`(stream_ns, ..)`: the namespace is declared only
    /// where it differs from `stream_ns`, and streams/dialback elements use the `stream:`/`db:`
    /// prefixes that header declares (`db` only with `with_dialback`).
    pub fn write_in_stream(&self, stream_ns: &str, out: &mut String) {
        self.write_root(Some(stream_ns), out);
    }

    /// Writes the element; `inherited` is the default namespace in scope, `None` if unknown.
    fn write_root(&self, inherited: Option<&str>, out: &mut String) {
        let prefix = match self.ns.as_str() {
            NS_STREAMS => Some("stream"),
            NS_DIALBACK => Some("db"),
            _ => None,
        };
        // An attribute rebinding the prefix (only possible on odd parsed input) would make the
        // prefixed name mean something else, so fall back to a default declaration.
        let prefix = prefix.filter(|p| self.attr(&format!("xmlns:{p}")).is_none());
        match prefix {
            Some(p) => {
                out.push('<');
                out.push_str(p);
                out.push(':');
                out.push_str(&self.name);
                if inherited.is_none() {
                    out.push_str(" xmlns:");
                    out.push_str(p);
                    out.push_str("='");
                    escape_attr(&self.ns, out);
                    out.push('\'');
                }
                // The prefix leaves the default namespace alone, so children inherit the
                // stream's default, not this element's namespace.
                if self.write_rest(inherited, out) {
                    out.push_str("</");
                    out.push_str(p);
                    out.push(':');
                    out.push_str(&self.name);
                    out.push('>');
                }
            }
            None => self.write_plain(inherited, out),
        }
    }

    /// Writes the element with an unprefixed name, declaring the default namespace if needed.
    fn write_plain(&self, inherited: Option<&str>, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        if inherited != Some(self.ns.as_str()) {
            out.push_str(" xmlns='");
            escape_attr(&self.ns, out);
            out.push('\'');
        }
        if self.write_rest(Some(&self.ns), out) {
            out.push_str("</");
            out.push_str(&self.name);
            out.push('>');
        }
    }

    /// Finishes a start tag already opened (`<name` plus declarations): attributes, then either
    /// `/>` (returning false) or `>` and the children (returning true: the caller writes the
    /// end tag).
    fn write_rest(&self, children_inherit: Option<&str>, out: &mut String) -> bool {
        for (name, value) in &self.attrs {
            if name == "xmlns" {
                continue;
            }
            out.push(' ');
            out.push_str(name);
            out.push_str("='");
            escape_attr(value, out);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return false;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_plain(children_inherit, out),
                Node::Text(t) => escape_text(t, out),
            }
        }
        true
    }
}

impl std::fmt::Display for Element {
    /// The [`write_to`](Element::write_to) serialisation.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        self.write_to(&mut out);
        f.write_str(&out)
    }
}
