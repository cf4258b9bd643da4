//! Reading the checkable requirements that people write in words inside a prompt ("in fewer
//! than 40 words", "do not use the word 'very'", "answer in JSON") and turning them into
//! verifier [`Constraint`]s.
//!
//! Precision matters more than recall here: a constraint the user did not ask for makes the
//! service prefer worse answers, while a missed one only leaves the choice to the other
//! scorers. So every rule is narrow, and when a phrase is ambiguous ("a 200-word essay" is
//! rarely meant exactly, "in one word" may be two) nothing is extracted.
//!
//! How it works:
//!
//! 1. Code blocks are dropped and quoted phrases are swapped for placeholders, so that a quote
//!    is taken whole ("end with 'Is there anything else?'") and its words never trigger a rule.
//! 2. The prompt is cut into sentences. Questions ("Why do people use all caps?"), sentences
//!    about the user's own text ("I wrote an essay with 3 paragraphs") and optional wishes
//!    ("no need to use bullet points") are skipped.
//! 3. Each sentence goes through [`RULES`], a table of small regexes with a builder each. Rules
//!    of one group are ordered most specific first, and a span claimed by one rule is not read
//!    again by a later rule of the same group ("no more than 5" is not also "more than 5").
//! 4. Counts of one kind are merged ("at least 50 words" and "at most 100 words" become one
//!    range), contradictions are dropped, and whatever `Verifier::new` would reject is dropped.

use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::constraint::{Case, Constraint};

/// Reads the checkable requirements of a prompt as verifier constraints.
///
/// Returns an empty list when the prompt states none, or states them in a way this reader
/// is not sure about. Every returned constraint is accepted by [`super::Verifier::new`].
pub fn from_prompt(text: &str) -> Vec<Constraint> {
    let (masked, quotes) = mask_quotes(&normalize(text));
    let mut found = Vec::new();
    for sentence in sentences(&masked) {
        if SKIPPED_SENTENCES.iter().any(|skip| skip.is_match(sentence)) {
            continue;
        }
        read_sentence(sentence, &quotes, &mut found);
    }
    finish(found)
}

// ---------------------------------------------------------------------------------------------
// Preparing the text
// ---------------------------------------------------------------------------------------------

/// Marks a quoted phrase in the masked text; the digits between are its index in the list of
/// quotes. Private-use characters, so they never clash with what people type.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Code blocks hold data or code, not instructions; a "max 5 words" inside one is not ours.
static CODE_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```.*?(?:```|\z)").expect("valid code block regex"));

/// Double quotes and backticks always pair up, so any pair on one line is a quote.
static DOUBLE_QUOTE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#""([^"\n]{1,300})"|`([^`\n]{1,300})`"#).expect("valid regex"));

/// A single quote doubles as an apostrophe ("don't", "the kids' toys"), so a quote must open
/// after a space or punctuation and close before one: `'Let's go'` stays whole.
static SINGLE_QUOTE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[\s(\[:,=])('([^\n]{1,300}?)')(?:[\s.,;:!?)\]]|$)").expect("valid regex")
});

/// Curly quotes become straight ones so that one set of rules reads both; stray private-use
/// marks are removed so that only ours remain.
fn normalize(text: &str) -> String {
    let text = CODE_BLOCK.replace_all(text, "\n");
    text.chars()
        .filter(|&c| c != OPEN && c != CLOSE)
        .map(|c| match c {
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{00AB}' | '\u{00BB}' => '"',
            '\u{2018}' | '\u{2019}' | '\u{201A}' => '\'',
            '\u{00A0}' => ' ',
            other => other,
        })
        .collect()
}

/// Swaps every quoted phrase for a placeholder and returns the masked text with the phrases.
fn mask_quotes(text: &str) -> (String, Vec<String>) {
    let mut quotes = Vec::new();
    let doubled = DOUBLE_QUOTE.replace_all(text, |caps: &Captures| {
        let inner = caps
            .get(1)
            .or_else(|| caps.get(2))
            .map_or("", |m| m.as_str());
        placeholder(&mut quotes, inner)
    });
    let mut masked = String::with_capacity(doubled.len());
    let mut copied = 0;
    let mut from = 0;
    // Matches must not swallow the space after a quote, or "'a' 'b'" would lose its second
    // quote; so the search resumes right after each closing quote.
    while let Some(caps) = SINGLE_QUOTE.captures_at(&doubled, from) {
        let (Some(whole), Some(inner)) = (caps.get(1), caps.get(2)) else {
            break;
        };
        masked.push_str(&doubled[copied..whole.start()]);
        masked.push_str(&placeholder(&mut quotes, inner.as_str()));
        copied = whole.end();
        from = whole.end();
    }
    masked.push_str(&doubled[copied..]);
    (masked, quotes)
}

fn placeholder(quotes: &mut Vec<String>, phrase: &str) -> String {
    quotes.push(phrase.trim().to_string());
    format!("{OPEN}{}{CLOSE}", quotes.len() - 1)
}

/// List markers in front of an instruction ("- Use at most 50 words").
static LIST_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[-*•>]+|\d{1,3}[.)])\s+").expect("valid regex"));

/// Cuts at line breaks and after `.`, `!` or `?` followed by a space. Quotes are masked by
/// now, so a "?" inside a quoted phrase does not cut.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\n' => Some(i),
            '.' | '!' | '?' => chars
                .peek()
                .is_none_or(|(_, next)| next.is_whitespace())
                .then_some(i + c.len_utf8()),
            _ => None,
        };
        if let Some(end) = end {
            out.push(&text[start..end]);
            start = end;
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(|s| {
            let s = s.trim();
            LIST_MARKER.find(s).map_or(s, |m| &s[m.end()..])
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Sentences that state no requirement, whatever words they contain.
static SKIPPED_SENTENCES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // Questions about a topic ("How do I write an essay in five paragraphs?"), but not
        // requests phrased as questions ("Can you answer in one sentence?").
        r"^(?:how|why|what|what's|when|where|which|who|whom|whose|is|are|was|were|do|does|did|should|has|have|had|isn't|aren't|doesn't)\b[^\n]*\?\s*$",
        // The user describing their own text: its counts are facts, not requirements.
        r"^(?:(?:i|we)\s+(?:just\s+|already\s+)?(?:wrote|have|had|got|made|created|drafted|received|found|read|am|was|were|typed)|my\s+[\w-]+\s+(?:has|have|had|is|was|contains?|uses|wants|wanted|asked|said|says|requires|required|told|needs)|here\s+is|here's|here\s+are|below\s+is|below\s+are|attached\s+is|the\s+following\s+(?:is|are|text|essay|passage|email|article|paragraph)|this\s+(?:text|essay|passage|email|article|paragraph|document)\s+(?:has|is|contains|uses))\b",
        // Optional wishes.
        r"\b(?:no\s+need|(?:don't|do\s+not|doesn't|does\s+not)\s+(?:need|have)\s+to|not\s+necessary|needn't|optional(?:ly)?|not\s+required|feel\s+free|if\s+you\s+(?:want|like|wish|prefer))\b",
    ]
    .iter()
    .map(|pattern| Regex::new(&format!("(?i){pattern}")).expect("valid skip regex"))
    .collect()
});

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

/// What a count is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Words,
    Sentences,
    Paragraphs,
    Bullets,
}

impl Unit {
    fn pattern(self) -> &'static str {
        match self {
            Self::Words => r"words?",
            Self::Sentences => r"sentences?",
            Self::Paragraphs => r"paragraphs?",
            Self::Bullets => {
                r"(?:bullet(?:ed)?[\s-]?points?|bullets?|bullet(?:ed)?[\s-]?items?|bullet[\s-]?list\s+items?)"
            }
        }
    }

    fn constraint(self, limits: Limits) -> Constraint {
        let Limits { exact, min, max } = limits;
        let weight = 1.0;
        match self {
            Self::Words => Constraint::WordCount {
                exact,
                min,
                max,
                weight,
            },
            Self::Sentences => Constraint::SentenceCount {
                exact,
                min,
                max,
                weight,
            },
            Self::Paragraphs => Constraint::ParagraphCount {
                exact,
                min,
                max,
                weight,
            },
            Self::Bullets => Constraint::BulletCount {
                exact,
                min,
                max,
                weight,
            },
        }
    }
}

/// A word that may stand between a number and its unit: "in 2 short paragraphs".
const ADJECTIVE: &str = r"(?:(?:short|brief|concise|long|detailed|separate|distinct|clear|simple|full|complete|succinct|well-written|well-structured|numbered|markdown)\s+)?";

/// Every unit, and the units that a bare number names exactly. "In three sentences" means
/// three, but "in 50 words" usually means about fifty, so words need an explicit comparison.
const ALL_UNITS: &[Unit] = &[
    Unit::Words,
    Unit::Sentences,
    Unit::Paragraphs,
    Unit::Bullets,
];
const BLOCK_UNITS: &[Unit] = &[Unit::Sentences, Unit::Paragraphs, Unit::Bullets];

/// How a phrase bounds a count, given the number `n` (and `m` for ranges) it names.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// "fewer than n": at most n - 1.
    Below,
    AtMost,
    AtLeast,
    /// "more than n": at least n + 1.
    Above,
    Exactly,
    /// "between n and m", inclusive.
    Between,
}

impl Bound {
    fn limits(self, n: usize, m: Option<usize>) -> Option<Limits> {
        let limits = match self {
            // "Fewer than 1 word" asks for nothing sensible.
            Self::Below => Limits::at_most(n.checked_sub(1).filter(|&max| max > 0)?),
            Self::AtMost => Limits::at_most(n),
            Self::AtLeast => Limits::at_least(n),
            Self::Above => Limits::at_least(n.checked_add(1)?),
            Self::Exactly => Limits::exactly(n),
            Self::Between => {
                let m = m.filter(|&m| m >= n)?;
                Limits {
                    exact: None,
                    min: Some(n),
                    max: Some(m),
                }
            }
        };
        Some(limits)
    }
}

/// An allowed range of counts, as the counting constraints take it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    exact: Option<usize>,
    min: Option<usize>,
    max: Option<usize>,
}

impl Limits {
    fn exactly(n: usize) -> Self {
        Self {
            exact: Some(n),
            min: None,
            max: None,
        }
    }

    fn at_least(n: usize) -> Self {
        Self {
            exact: None,
            min: Some(n),
            max: None,
        }
    }

    fn at_most(n: usize) -> Self {
        Self {
            exact: None,
            min: None,
            max: Some(n),
        }
    }

    /// Both limits at once ("at least 50 words" and "at most 100 words"), or `None` when they
    /// contradict each other.
    fn intersect(self, other: Self) -> Option<Self> {
        let (lo_a, hi_a) = self.range();
        let (lo_b, hi_b) = other.range();
        let lo = lo_a.max(lo_b);
        let hi = match (hi_a, hi_b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if hi.is_some_and(|hi| lo > hi) {
            return None;
        }
        Some(match (lo, hi) {
            (lo, Some(hi)) if lo == hi => Self::exactly(lo),
            (0, hi) => Self {
                exact: None,
                min: (self.min.is_some() || other.min.is_some()).then_some(0),
                max: hi,
            },
            (lo, hi) => Self {
                exact: None,
                min: Some(lo),
                max: hi,
            },
        })
    }

    /// Lowest and highest allowed count; `None` is no upper limit.
    fn range(self) -> (usize, Option<usize>) {
        match self.exact {
            Some(n) => (n, Some(n)),
            None => (self.min.unwrap_or(0), self.max),
        }
    }
}

/// Which rules compete for the same words: a later rule of a group skips text that an
/// earlier rule of the group already read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Count(Unit),
    Keywords,
    Case,
    Json,
    Start,
    End,
}

/// A builder of a constraint from a match; `None` when the match is not a requirement after all.
type Make = fn(&Hit) -> Option<Constraint>;

/// What a rule makes of a match.
#[derive(Clone, Copy)]
enum Build {
    /// A count of `Unit`, bounded as `Bound` says, from the groups `n` (and `m`).
    Count(Unit, Bound),
    /// Anything else; `None` when the match turns out not to be a requirement.
    Make(Make),
}

struct Rule {
    group: Group,
    regex: Regex,
    build: Build,
}

/// Something found in a sentence, before counts are merged.
#[derive(Debug)]
enum Found {
    Count(Unit, Limits),
    Other(Constraint),
}

/// One match of a rule, with what the builder needs around it.
struct Hit<'a> {
    caps: Captures<'a>,
    /// The sentence before the match, for guards such as "each paragraph should have...".
    prefix: &'a str,
    quotes: &'a [String],
}

// Regex fragments, combined by `expand`. A `{NAME}` in a template is replaced by the fragment.

/// Where an instruction starts: the start of a sentence or clause, or after words that
/// introduce one ("and", "please", "you must", "make sure to"). Requiring it keeps "Explain
/// how to use the word processor" from reading as "use the word 'processor'".
const LEAD: &str = r"(?:^|[,;:(]\s*|\b(?:and|then|also|please|but|so|just|always|now|finally|simply)\s+|\b(?:must|should|shall)\s+|\byou\s+(?:will|must|should|need\s+to|have\s+to|are\s+to)\s+|\b(?:can|could|would|will)\s+you\s+|\b(?:be|make)\s+sure\s+(?:to|that\s+you|you)\s+|\b(?:remember|try|want\s+you|like\s+you|need\s+you|ask\s+you)\s+to\s+|\bdon't\s+forget\s+to\s+)(?:please\s+)?(?:also\s+|always\s+|only\s+)?";

/// Number words: one to nineteen, and the tens with an optional unit ("twenty-five").
const NUMBER_WORDS: [&str; 19] = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// A number in words, as a regex: tens (with their unit) first, so that "twenty-five" is not
/// read as "twenty"; "a hundred" before "one" for the same reason.
fn number_words_pattern() -> String {
    let ones = NUMBER_WORDS[..9].join("|");
    format!(
        r"(?:(?:{})(?:[\s-](?:{ones})\b)?|(?:a|one)\s+hundred|{})",
        TENS.join("|"),
        NUMBER_WORDS.join("|")
    )
}

/// A negation in front of a comparison: "do not write more than..." is an upper limit.
const NEG: &str = r"(?:do\s+not|don't|never|not|shouldn't|should\s+not|must\s+not|mustn't|cannot|can't|may\s+not)";

/// A number after a unit that means the number applies to parts, not to the whole response:
/// "at most 10 words per line", "3 sentences each".
const PER: &str = r"(?P<per>\s+(?:per|each|apiece|in\s+each|for\s+each|in\s+every|for\s+every|of\s+each|in\s+(?:the|your)\s+(?:title|heading|headline|first|last|conclusion|introduction|intro))\b)?";

/// A quoted phrase (masked), and a list of them.
const Q: &str = r"\x{E000}\d+\x{E001}";
const QLIST: &str = r"{Q}(?:\s*(?:,\s*(?:and|or)?|and|or|&|/)?\s*{Q})*";

/// An unquoted word, a list of them, and what may follow the list. The list must end at a
/// clear boundary, or "Include the keywords rust and memory safety" would drop "safety".
const WORD: &str = r"[\p{L}\p{N}][\p{L}\p{N}_'-]*";
const WSEP: &str = r"(?:\s*,\s*(?:(?:and|or)\s+)?|\s+(?:and|or)\s+|\s*/\s*|\s*&\s*)";
const WLIST: &str = r"{WORD}(?:{WSEP}{WORD})*";

/// A comma ends a list only before words that cannot be another item: ", and the River
/// Thames" continues the list, ", but keep it short" does not.
const WEND: &str = r"(?:\s*(?:[.;:!?)]|$)|\s*,\s*$|\s*,?\s+(?:in|at|anywhere|throughout|when|while|within|from|for|as|even|because|since|if|whatsoever|unless|again|ever|but|then|so|please|without|and\s+(?:write|make|use|keep|answer|respond|end|finish|start|begin|include|do|don't|avoid|never|be|mention|say|give|provide|format)|or\s+(?:any|other|similar|related|their))\b|\s*,\s+(?:keep|make|write|use|answer|respond|do|don't|never|avoid|end|start|begin|include|be|describe|explain|tell|list|give|summari[sz]e|provide|talk|discuss|create|compose|generate|mention|focus|say)\b)";

/// Keywords, quoted or not; an unquoted list carries the `tail` it ended on.
const LIST: &str = r"(?:(?P<q>{QLIST})|(?P<w>{WLIST})(?P<tail>{WEND}))";

/// "the keywords", "any of the following words:", "the phrase".
const INTRO: &str = r"(?:(?:any|all|each|both)\s+(?:of\s+)?)?(?:the\s+)?(?:following\s+)?(?:(?:key|specific|exact)\s*)?(?:words?|terms?|phrases?|keywords?|expressions?)\s*:?\s*";

/// "at least twice", "exactly 3 times".
const FREQ: &str = r"(?P<cmp>at\s+least|at\s+most|no\s+more\s+than|not\s+more\s+than|no\s+(?:fewer|less)\s+than|exactly|only|just|more\s+than|(?:fewer|less)\s+than|a\s+minimum\s+of|a\s+maximum\s+of|up\s+to)?\s*(?P<n>once|twice|thrice|(?:\d{1,5}|{NUMWORD})\s+times)\b";

/// Who or what a requirement is stated about: the response, not some other text.
const SUBJECT: &str = r"(?:response|answer|reply|output|text|everything|message|essay|story|poem|letter|email|summary|explanation|description|it)";
const MODAL: &str = r"(?:must|should|needs\s+to|has\s+to|have\s+to|will|shall|is\s+to|are\s+to)";

/// A few words between a verb and what it is asked to do ("write *a short poem* in lowercase").
/// The builders check them against [`GAP_GUARD`].
const GAP: &str = r"(?P<gap>(?:[\w'\x{E000}\x{E001}-]+,?\s+){0,6}?)";
const GAP2: &str = r"(?P<gap2>(?:[\w'\x{E000}\x{E001}-]+,?\s+){0,4}?)";

const LOWER: &str = r"(?:(?:only|all|entirely|completely|exclusively|strictly|purely|just)\s+(?:in\s+)?)?(?:all\s+)?(?:lower[\s-]?case(?:\s+(?:letters|characters|text|form))?|small\s+letters)(?:\s+only)?";
const UPPER: &str = r"(?:(?:only|all|entirely|completely|exclusively|strictly|purely|just)\s+(?:in\s+)?)?(?:all\s+)?(?:caps|capitals|capital\s+letters|capitalized\s+letters|block\s+(?:capitals|letters)|upper[\s-]?case(?:\s+(?:letters|characters|text|form))?)(?:\s+only)?";
const CAPITALS: &str = r"(?:capital\s+letters|capitals|capitali[sz]ation|capitalized\s+letters|upper[\s-]?case(?:\s+(?:letters|characters))?)";
/// A count joined to a case clause: "all lowercase and under 30 words".
const AND_COUNT: &str = r"\s+and\s+(?:(?:in|with|using)\s+)?(?:under|below|over|fewer|less|more|at\s+(?:most|least)|no\s+(?:more|fewer|less|longer)|not\s+more|exactly|up\s+to|within|between|a\s+(?:maximum|minimum)|\d{1,5}|{NUMWORD})\b";
const CASE_VERB: &str = r"(?:write|respond|reply|answer|type|output|give|provide|format|put|present|produce|rewrite|compose|draft|list|tell|describe|explain|summari[sz]e|translate|return|generate|express|deliver|say)";
/// A letter case asked for only a part: "use all caps for the title", "in lowercase except...".
const CASE_TAIL: &str = r"(?P<tail>\s+(?:for|except|but|when|on|apart|other\s+than|to\s+(?:write|spell|mark|show|emphasi[sz]e|highlight)|in\s+(?:the|your)\s+(?:title|heading|headings|headline|first|last))\b)?";

const JSON_VERB: &str = r"(?:answer|respond|reply|output|return|format|give|provide|write|present|structure|list|put|express|deliver|produce|rewrite|send|generate|describe|summari[sz]e|encode|represent|convert|extract|wrap)";
const JSON_WORD: &str = r"(?:(?:a|an|the|valid|pure|strict|raw|proper|well-formed|plain|correct|clean|only|just|single)\s+)*json";
const JSON_NOUN: &str = r"(?:\s+(?:format(?:ted)?|object|only|form|output|string|response|block|data|dictionary|dict|array|document|structure|code\s+block))*";
/// "with the keys "a", "b"", "with keys name and age", "with a "summary" key". When `ki` matches but no list of keys
/// can be read after it, the builder gives up rather than drop the keys.
const KEYS: &str = r"(?:\s*,?\s*(?:{JSON_DESC}\s*,?\s*)?(?P<ki>(?:with|containing|that\s+(?:has|have|contains|includes)|having|including|using)\s+(?:exactly\s+|only\s+)?(?:the\s+)?(?:following\s+)?(?:(?:\d+|{NUMWORD})\s+)?(?:top-level\s+)?(?:keys|fields|properties|attributes))\s*:?\s*(?:(?P<kq>{QLIST})|(?P<kw>{KEY}(?:{WSEP}{KEY})*)(?:{KEND}))?|\s*,?\s*with\s+(?:a|an|the|one)\s+(?:single\s+)?(?P<kq2>{QLIST})\s+(?:keys?|fields?|propert(?:y|ies))\b)?";
/// What the object is about, between it and its keys: "a JSON object describing a book, with
/// the keys...". Read only when keys follow; [`json`] checks its words.
const JSON_DESC: &str =
    r"(?P<desc>(?:describing|representing|about|for|of|on)\s+(?:[\w'-]+\s+){0,3}?[\w'-]+)";
const KEY: &str = r"[\p{L}_][\p{L}\p{N}_-]*";
const KEND: &str = r"(?:\s*(?:[.;:!?)]|$)|\s*,\s+(?:(?:and|but|then)\s+)?(?:nothing|no|with|without|then|please|do|don't|use|make|keep|end|start|begin|include|avoid|never|write|respond|answer|be|also)\b|\s+(?:for|in|to|only|each|per|where|describing|representing|that|which|and\s+(?:nothing|no))\b)";
/// JSON as a topic or a tool rather than the answer's format: "in JSON or YAML", "JSON file".
const JSON_TAIL: &str = r"(?P<tail>\s+(?:or|and/or|file|files|schema|parser|parsing|library|module|api|endpoint|from|via|syntax|mode|serialization|support)\b)?";

/// What a response is asked to start or end with: a quoted phrase, or "the word X".
const TARGET: &str = r"(?:(?:(?:the|this|these|that|a)\s+(?:exact\s+|following\s+|same\s+|specific\s+)?(?:phrase|sentence|words?|line|question|text|string|greeting|salutation|sign-?off|closing|statement|quote)\s*:?\s*)?(?P<q>{Q})|the\s+(?:exact\s+)?word\s+(?P<w>{WORD})(?P<tail>{WEND}))";
/// The whole response, as the subject of "make sure ... ends with".
const EDGE_SUBJECT: &str = r"(?:it|(?:your|the)\s+(?:entire\s+|whole\s+)?(?:response|answer|reply|message|email|letter|essay|story|poem|text|output|post|speech|summary|note|explanation|description|card|toast))";
const EDGE_OBJECT: &str = r"(?:(?:your|the)\s+(?:entire\s+|whole\s+|final\s+)?(?:response|answer|reply|message|email|letter|essay|story|poem|text|output|post|speech|summary|note|explanation|description)\s+|it\s+|this\s+|off\s+|things\s+)?";

/// Replaces every `{NAME}` by its fragment, repeatedly, since fragments use fragments.
fn expand(template: &str) -> String {
    let number_words = number_words_pattern();
    let num = format!(r"(?P<n>\d{{1,5}}|(?:a|one)\s+single|{number_words})\b");
    let num2 = format!(r"(?P<m>\d{{1,5}}|{number_words})\b");
    let fragments: &[(&str, &str)] = &[
        ("{LEAD}", LEAD),
        ("{NUMWORD}", &number_words),
        ("{NUM}", &num),
        ("{NUM2}", &num2),
        ("{NEG}", NEG),
        ("{PER}", PER),
        ("{QLIST}", QLIST),
        ("{Q}", Q),
        ("{WORD}", WORD),
        ("{WSEP}", WSEP),
        ("{WLIST}", WLIST),
        ("{WEND}", WEND),
        ("{LIST}", LIST),
        ("{INTRO}", INTRO),
        ("{FREQ}", FREQ),
        ("{SUBJECT}", SUBJECT),
        ("{MODAL}", MODAL),
        ("{GAP}", GAP),
        ("{GAP2}", GAP2),
        ("{LOWER}", LOWER),
        ("{UPPER}", UPPER),
        ("{CAPITALS}", CAPITALS),
        ("{AND_COUNT}", AND_COUNT),
        ("{CASE_VERB}", CASE_VERB),
        ("{CASE_TAIL}", CASE_TAIL),
        ("{JSON_VERB}", JSON_VERB),
        ("{JSON_WORD}", JSON_WORD),
        ("{JSON_NOUN}", JSON_NOUN),
        ("{KEYS}", KEYS),
        ("{JSON_DESC}", JSON_DESC),
        ("{KEY}", KEY),
        ("{KEND}", KEND),
        ("{JSON_TAIL}", JSON_TAIL),
        ("{TARGET}", TARGET),
        ("{EDGE_OBJECT}", EDGE_OBJECT),
        ("{EDGE_SUBJECT}", EDGE_SUBJECT),
    ];
    let mut out = template.to_string();
    // Fragments nest at most a few levels deep.
    for _ in 0..6 {
        let before = out.clone();
        for (name, fragment) in fragments {
            out = out.replace(name, fragment);
        }
        if out == before {
            break;
        }
    }
    out
}

fn compile(template: &str) -> Regex {
    let pattern = format!("(?i){}", expand(template));
    Regex::new(&pattern).unwrap_or_else(|e| panic!("invalid rule regex {template}: {e}"))
}

/// Ways of stating a count, tried in this order, for the units listed.
///
/// Ranges and negated forms come first so that "at least 3 but no more than 5" and "don't go
/// over 100" are read whole, not as their parts.
const COUNT_FORMS: &[(&str, Bound, &[Unit])] = &[
    (
        r"\bbetween\s+{NUM}\s+and\s+{NUM2}\s+{UNIT}",
        Bound::Between,
        ALL_UNITS,
    ),
    (
        r"\b(?:from\s+)?{NUM}\s+to\s+{NUM2}\s+{UNIT}",
        Bound::Between,
        ALL_UNITS,
    ),
    // Digits only: "twenty-five words" is one number, not a range.
    (
        r"\b(?P<n>\d{1,5})\s*[-–—]\s*(?P<m>\d{1,5})\s+{UNIT}",
        Bound::Between,
        ALL_UNITS,
    ),
    (r"\b{NUM}\s+or\s+{NUM2}\s+{UNIT}", Bound::Between, ALL_UNITS),
    (
        r"\b(?:at\s+least|no\s+(?:fewer|less)\s+than|a\s+minimum\s+of)\s+{NUM}\s+(?:{UNIT}\s+)?(?:but|and)\s+(?:no\s+more\s+than|not\s+more\s+than|at\s+most|a\s+maximum\s+of)\s+{NUM2}\s+{UNIT}",
        Bound::Between,
        ALL_UNITS,
    ),
    (
        r"\b{NEG}\s+(?:[\w']+\s+){0,3}?(?:more\s+than|longer\s+than|over|above|beyond|exceed(?:ing)?)\s+{NUM}\s+{UNIT}",
        Bound::AtMost,
        ALL_UNITS,
    ),
    (
        r"\b{NEG}\s+(?:[\w']+\s+){0,3}?(?:fewer|less|shorter)\s+than\s+{NUM}\s+{UNIT}",
        Bound::AtLeast,
        ALL_UNITS,
    ),
    (
        r"\b{NUM}\s+{UNIT}\s+(?:or\s+(?:less|fewer|under|shorter)|max(?:imum)?|at\s+(?:the\s+)?most|tops)\b",
        Bound::AtMost,
        ALL_UNITS,
    ),
    (
        r"\b{NUM}\s+{UNIT}\s+(?:or\s+(?:more|longer|over)|min(?:imum)?|at\s+(?:the\s+)?least)\b",
        Bound::AtLeast,
        ALL_UNITS,
    ),
    (
        r"\b(?:at\s+most|no\s+(?:more|longer)\s+than|not\s+more\s+than|up\s+to|(?:a\s+)?max(?:imum)?(?:\s+of)?|within|not\s+(?:to\s+)?exceed(?:ing)?|limit(?:ed)?\s+(?:(?:it|this|yourself|(?:your|the)\s+(?:[\w-]+\s+)?[\w-]+)\s+)?to|keep\s+(?:it|this|(?:your|the)\s+[\w-]+)\s+(?:to|within))\s+{NUM}\s+{UNIT}",
        Bound::AtMost,
        ALL_UNITS,
    ),
    (
        r"\b(?:at\s+least|no\s+(?:fewer|less|shorter)\s+than|not\s+(?:fewer|less)\s+than|(?:a\s+)?min(?:imum)?(?:\s+of)?)\s+{NUM}\s+{UNIT}",
        Bound::AtLeast,
        ALL_UNITS,
    ),
    (
        r"\b(?:(?:fewer|less|shorter)\s+than|under|below)\s+{NUM}\s+{UNIT}",
        Bound::Below,
        ALL_UNITS,
    ),
    (
        r"\b(?:(?:more|longer|greater)\s+than|over|above)\s+{NUM}\s+{UNIT}",
        Bound::Above,
        ALL_UNITS,
    ),
    (
        r"\b(?:exactly|precisely)\s+{NUM}\s+{UNIT}",
        Bound::Exactly,
        ALL_UNITS,
    ),
    // "in three sentences", "use 4 bullet points", "give me five bullets".
    (
        r"\b(?:in|into|using|use|write|give|provide|list|contain|include|with|as|be|need|want|make|produce|create|offer|return)\s+(?:me\s+|us\s+)?(?:only\s+|just\s+)?{NUM}\s+{UNIT}",
        Bound::Exactly,
        BLOCK_UNITS,
    ),
    // "a one-sentence summary", "a 3-paragraph essay"; after "a" only, since "this
    // 5-paragraph article" describes the input.
    (
        r"\b(?:a|an)\s+(?:{NUM}|(?P<single>single))-{UNIT}",
        Bound::Exactly,
        BLOCK_UNITS,
    ),
    // "a bulleted list of five items".
    (
        r"\b(?:bullet(?:ed)?|bullet-point)\s+list\s+(?:of|with)\s+(?:exactly\s+)?{NUM}\s+(?:items|points|entries|bullets?)",
        Bound::Exactly,
        &[Unit::Bullets],
    ),
    (
        r"\blist\s+of\s+(?:exactly\s+)?{NUM}\s+{UNIT}",
        Bound::Exactly,
        &[Unit::Bullets],
    ),
];

/// Every other rule: (group, template, builder), most specific first within a group.
const OTHER_RULES: &[(Group, &str, Make)] = &[
    // --- Keywords: how often, then forbidden, then required. ---
    // "Don't use the word 'very' more than once": an upper limit, not a ban.
    (
        Group::Keywords,
        r"\b(?:{NEG}|avoid)\s+(?:use|using|repeat|repeating|mention|mentioning|say|saying|write|writing|include|including)\s+(?:{INTRO})?(?P<one>{Q}|{WORD})\s+more\s+than\s+(?P<n>once|twice|thrice|(?:\d{1,5}|{NUMWORD})\s+times)\b",
        frequency_at_most,
    ),
    (
        Group::Keywords,
        r"\b(?:use|uses|using|include|includes|including|mention|mentions|mentioning|say|says|repeat|repeats|write|incorporate|feature|features)\s+{INTRO}(?P<one>{Q}|{WORD})\s+{FREQ}",
        frequency,
    ),
    (
        Group::Keywords,
        r"\b(?:use|uses|using|include|includes|including|mention|mentions|mentioning|say|says|repeat|repeats|write|incorporate|feature|features)\s+(?P<one>{Q})\s+{FREQ}",
        frequency,
    ),
    // Unquoted and without "the word", only verbs that are about words: "mention dogs twice".
    (
        Group::Keywords,
        r"\b(?:mention|mentions|mentioning|say|repeat)\s+(?P<one>{WORD})\s+{FREQ}",
        frequency,
    ),
    (
        Group::Keywords,
        r"\b(?:the\s+)?(?:key\s*)?(?:word|term|phrase|keyword|name)\s+(?P<one>{Q}|{WORD})\s+(?:{MODAL}\s+(?:appear|occur|be\s+(?:used|mentioned|repeated|included))|appears|occurs|is\s+(?:used|mentioned|repeated)|shows\s+up)\s+(?:(?:in|throughout)\s+(?:your|the)\s+[\w-]+\s+)?{FREQ}",
        frequency,
    ),
    (
        Group::Keywords,
        r"\b(?:the\s+)?(?:key\s*)?(?:word|term|phrase|keyword|name)\s+(?P<one>{Q}|{WORD})\s+(?:must\s+not|mustn't|should\s+not|shouldn't|may\s+not|cannot|can't|must\s+never|should\s+never)\s+(?:appear|occur|be\s+(?:used|mentioned|included))\b",
        forbidden_one,
    ),
    (
        Group::Keywords,
        r"\b{NEG}\s+(?:use|say|write|include|contain|mention|utilize|type)\s+{INTRO}{LIST}",
        forbidden,
    ),
    (
        Group::Keywords,
        r"\b(?:without|avoid|avoiding|refrain\s+from|exclude|excluding|omit)\s+(?:(?:using|saying|mentioning|including|writing|the\s+use\s+of)\s+)?{INTRO}{LIST}",
        forbidden,
    ),
    (
        Group::Keywords,
        r"\b(?:{NEG}|without|avoid|avoiding)\s+(?:(?:using|use|saying|say|mentioning|mention|writing|write|including|include)\s+)?(?P<q>{QLIST})",
        forbidden,
    ),
    (
        Group::Keywords,
        r"\b(?:do\s+not|don't|never|without|avoid)\s+mention(?:ing)?\s+(?P<w>{WLIST})(?P<tail>{WEND})",
        forbidden,
    ),
    (
        Group::Keywords,
        r"\b(?:the\s+)?(?:key\s*)?(?:word|term|phrase|keyword)\s+(?P<one>{Q}|{WORD})\s+(?:must|should|needs\s+to|has\s+to)\s+(?:appear|be\s+(?:used|mentioned|included))\b",
        required_one,
    ),
    (
        Group::Keywords,
        r"{LEAD}(?:include|use|incorporate|mention|add|contain|insert|feature|work\s+in)\s+{INTRO}{LIST}",
        required,
    ),
    (
        Group::Keywords,
        r"{LEAD}(?:include|incorporate|mention|insert|feature)\s+(?P<q>{QLIST})",
        required,
    ),
    (
        Group::Keywords,
        r"\b{SUBJECT}\s+{MODAL}\s+(?:also\s+)?(?:include|contain|use|mention|feature)\s+(?:{INTRO}{LIST}|(?P<q2>{QLIST}))",
        required,
    ),
    // --- Letter case: lowercase first, since "no capital letters" mentions capitals. ---
    (
        Group::Case,
        r"{LEAD}{CASE_VERB}\s+{GAP}(?:in|using|with)\s+{LOWER}{CASE_TAIL}",
        lowercase,
    ),
    (
        Group::Case,
        r"{LEAD}{CASE_VERB}\s+{GAP}(?:with\s+no|without(?:\s+using)?(?:\s+any)?|using\s+no)\s+{CAPITALS}{CASE_TAIL}",
        lowercase,
    ),
    (Group::Case, r"{LEAD}use\s+{LOWER}{CASE_TAIL}", lowercase),
    (
        Group::Case,
        r"\b{SUBJECT}\s+{GAP}{MODAL}\s+(?:be|use|contain|have)\s+{GAP2}(?:(?:in|using|with)\s+)?(?:{LOWER}|no\s+{CAPITALS}){CASE_TAIL}",
        lowercase,
    ),
    (
        Group::Case,
        r"\b{SUBJECT}\s+{GAP}(?:must|should|may|can)\s*(?:not|n't)\s+(?:contain|use|include|have)\s+(?:any\s+)?{CAPITALS}{CASE_TAIL}",
        lowercase,
    ),
    (
        Group::Case,
        r"{LEAD}(?:do\s+not|don't|never)\s+(?:use|include|type|write\s+(?:with|in))\s+(?:any\s+)?{CAPITALS}{CASE_TAIL}",
        lowercase,
    ),
    (
        Group::Case,
        r"{LEAD}(?:do\s+not|don't|never)\s+capitali[sz]e(?:\s+(?:anything|any\s+(?:letters?|words?))|(?:\s+at\s+all)?\s*[.!]?$)",
        lowercase,
    ),
    (
        Group::Case,
        r"^(?:please\s+)?(?:(?:in|using)\s+)?(?:{LOWER}|no\s+{CAPITALS}(?:\s+(?:are|is)\s+(?:allowed|permitted))?)(?:,?\s+please)?\s*[.!]?$",
        lowercase,
    ),
    // A clause of its own: "Write a tweet about coffee, all lowercase."
    (
        Group::Case,
        r"[,;:]\s*(?:and\s+)?(?:(?:in|using)\s+)?(?:{LOWER}|no\s+{CAPITALS})(?:,?\s+please)?(?:\s*(?:[,;.!]|$)|{AND_COUNT})",
        lowercase,
    ),
    (
        Group::Case,
        r"{LEAD}{CASE_VERB}\s+{GAP}(?:in|using|with)\s+{UPPER}{CASE_TAIL}",
        uppercase,
    ),
    (Group::Case, r"{LEAD}use\s+{UPPER}{CASE_TAIL}", uppercase),
    (
        Group::Case,
        r"\b{SUBJECT}\s+{GAP}{MODAL}\s+(?:be|use)\s+{GAP2}(?:(?:in|using|with)\s+)?{UPPER}{CASE_TAIL}",
        uppercase,
    ),
    (
        Group::Case,
        r"{LEAD}capitali[sz]e\s+(?:everything|every\s+(?:single\s+)?letter|all\s+(?:of\s+the\s+)?letters)\b",
        uppercase,
    ),
    (
        Group::Case,
        r"^(?:please\s+)?(?:(?:in|using)\s+)?{UPPER}(?:,?\s+please)?\s*[.!]?$",
        uppercase,
    ),
    (
        Group::Case,
        r"[,;:]\s*(?:and\s+)?(?:(?:in|using)\s+)?{UPPER}(?:,?\s+please)?(?:\s*(?:[,;.!]|$)|{AND_COUNT})",
        uppercase,
    ),
    // --- JSON. ---
    (
        Group::Json,
        r"{LEAD}{JSON_VERB}\s+{GAP}(?:in|as|with|using|into|in\s+the\s+form\s+of)\s+{JSON_WORD}{JSON_NOUN}{KEYS}{JSON_TAIL}",
        json,
    ),
    (
        Group::Json,
        r"{LEAD}(?:output|return|give|produce|send)\s+(?:me\s+)?{JSON_WORD}{JSON_NOUN}{KEYS}{JSON_TAIL}",
        json,
    ),
    (
        Group::Json,
        r"\b(?:response|answer|reply|output|result|everything)\s+{GAP}{MODAL}\s+be\s+(?:(?:a|an|in|as|valid|formatted|wrapped|written|returned|given|provided|pure|strict|only|entirely|the|form|of|proper|strictly|raw)\s+)*json{JSON_NOUN}{KEYS}{JSON_TAIL}",
        json,
    ),
    (
        Group::Json,
        r"^(?:(?:output|response|answer)\s+)?format\s*:\s*json{JSON_NOUN}{KEYS}{JSON_TAIL}",
        json,
    ),
    (
        Group::Json,
        r"^(?:please\s+)?(?:valid\s+)?json\s+only\s*[.!]?$",
        json,
    ),
    // --- Start and end. ---
    (
        Group::End,
        r"{LEAD}(?:end|finish|conclude|close|wrap\s+up|sign\s+off)\s+{EDGE_OBJECT}(?:with|by\s+(?:saying|writing))\s+{TARGET}",
        ends_with,
    ),
    (
        Group::End,
        r"\b{SUBJECT}\s+{MODAL}\s+(?:always\s+)?(?:end|finish|conclude|close)\s+(?:with|in|on)\s+{TARGET}",
        ends_with,
    ),
    // "Make sure it ends with 'Good luck!'".
    (
        Group::End,
        r"{LEAD}(?:(?:make|be)\s+sure|ensure)\s+(?:that\s+)?{EDGE_SUBJECT}\s+(?:always\s+)?(?:ends|finishes|concludes|closes)\s+(?:with|on)\s+{TARGET}",
        ends_with,
    ),
    (
        Group::End,
        r"\b(?:the\s+)?(?:last|final|closing)\s+(?:line|sentence|words?)\s+(?:of\s+(?:your|the)\s+[\w-]+\s+)?{MODAL}\s+be\s+(?:exactly\s+)?(?P<q>{Q})",
        ends_with,
    ),
    (
        Group::Start,
        r"{LEAD}(?:start|begin|open|kick\s+off)\s+{EDGE_OBJECT}(?:with|by\s+(?:saying|writing))\s+{TARGET}",
        starts_with,
    ),
    (
        Group::Start,
        r"\b{SUBJECT}\s+{MODAL}\s+(?:always\s+)?(?:start|begin|open)\s+(?:with|by)\s+{TARGET}",
        starts_with,
    ),
    (
        Group::Start,
        r"{LEAD}(?:(?:make|be)\s+sure|ensure)\s+(?:that\s+)?{EDGE_SUBJECT}\s+(?:always\s+)?(?:starts|begins|opens)\s+with\s+{TARGET}",
        starts_with,
    ),
    (
        Group::Start,
        r"\b(?:the\s+)?(?:first|opening)\s+(?:line|sentence|words?)\s+(?:of\s+(?:your|the)\s+[\w-]+\s+)?{MODAL}\s+be\s+(?:exactly\s+)?(?P<q>{Q})",
        starts_with,
    ),
];

/// The rule table, compiled once.
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let counts = COUNT_FORMS.iter().flat_map(|&(template, bound, units)| {
        units.iter().map(move |&unit| Rule {
            group: Group::Count(unit),
            regex: compile(&format!(
                "{}{PER}",
                template.replace("{UNIT}", &format!("{ADJECTIVE}{}", unit.pattern()))
            )),
            build: Build::Count(unit, bound),
        })
    });
    let others = OTHER_RULES.iter().map(|&(group, template, make)| Rule {
        group,
        regex: compile(template),
        build: Build::Make(make),
    });
    counts.chain(others).collect()
});

/// Runs every rule over one sentence.
fn read_sentence(sentence: &str, quotes: &[String], found: &mut Vec<Found>) {
    let mut taken: Vec<(Group, Range<usize>)> = Vec::new();
    for rule in RULES.iter() {
        for caps in rule.regex.captures_iter(sentence) {
            let Some(whole) = caps.get(0) else {
                continue;
            };
            // The words a list ended on ("in", "and") may still start another requirement.
            let end = caps.name("tail").map_or(whole.end(), |tail| tail.start());
            let span = whole.start()..end.max(whole.start());
            let overlaps = taken.iter().any(|(group, other)| {
                *group == rule.group && span.start < other.end && other.start < span.end
            });
            if overlaps {
                continue;
            }
            taken.push((rule.group, span));
            let hit = Hit {
                prefix: &sentence[..whole.start()],
                caps,
                quotes,
            };
            let result = match rule.build {
                Build::Count(unit, bound) => {
                    count(&hit, bound).map(|limits| Found::Count(unit, limits))
                }
                Build::Make(make) => {
                    if TOPIC.is_match(hit.prefix) {
                        None
                    } else {
                        make(&hit).map(Found::Other)
                    }
                }
            };
            found.extend(result);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Builders and their guards
// ---------------------------------------------------------------------------------------------

/// A clause that talks about a topic rather than asking for something: "explain why people
/// write in all caps", "how to answer in JSON".
static TOPIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:why|how|whether)\s+(?:[\w']+\s+){0,2}?(?:you|people|one|we|they|someone|somebody|writers|authors|users|to|should|would|can|could|must|i)\b")
        .expect("valid topic regex")
});

/// A count that applies to a part of the response ("each paragraph should have at most 3
/// sentences", "a title of at most 5 words") or to what some code handles ("write a regex
/// that matches sentences with at most 5 words").
static PART_OF_RESPONSE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:each|every|per|title|headline|heading|slogan|tagline|caption|subject\s+line|regex|regexp|regular\s+expression|function|program|script|code|query|algorithm|class|method)\b")
    .expect("valid part regex")
});

/// A negation right before a count: "do not write at least...".
static NEGATED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:\b(?:not|never|without)|n't)\s+(?:[\w']+\s+){0,2}$")
        .expect("valid negation regex")
});

/// Words between a verb and its format that show the format is about something else: code
/// ("write a function that returns it as JSON"), a topic ("explain why people write in
/// lowercase"), or a part of the response ("write the names in capital letters").
static GAP_GUARD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:that|which|who|whom|whose|why|how|what|when|where|whether|from|to|code|program|programs|script|scripts|function|functions|class|classes|method|parser|file|files|api|endpoint|tool|library|app|query|people|someone|users|title|titles|heading|headings|header|headers|headline|headlines|name|names|acronym|acronyms|keyword|keywords|first|last|initial|initials|word|words|letter|letters|term|terms|variable|variables|constant|constants)\b|\x{E000}")
        .expect("valid gap regex")
});

/// Words in what a JSON object describes that make its keys belong to some other object:
/// "an object for each user with the keys...", "describing the API, with fields...".
static DESC_GUARD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:each|every|per|all|list|array|items?|nested|inner|outer|child|parent)\b")
        .expect("valid description regex")
});

/// Unquoted "keywords" that are really pronouns or determiners ("don't mention it").
const STOP_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "it",
    "this",
    "that",
    "these",
    "those",
    "them",
    "they",
    "any",
    "anything",
    "something",
    "everything",
    "nothing",
    "some",
    "your",
    "my",
    "his",
    "her",
    "their",
    "our",
    "its",
    "me",
    "you",
    "us",
    "him",
    "following",
    "word",
    "words",
    "same",
    "other",
    "such",
    "each",
    "all",
    "both",
    "either",
    "neither",
    "one",
];

/// Finds a quoted phrase's placeholder.
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x{E000}(\d+)\x{E001}").expect("valid placeholder regex"));

/// Separators of an unquoted list.
static LIST_SEPARATOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\s*,\s*(?:(?:and|or)\s+)?|\s+(?:and|or)\s+|\s*/\s*|\s*&\s*")
        .expect("valid separator regex")
});

static HAS_OR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bor\b|/").expect("valid regex"));

impl Hit<'_> {
    fn text(&self, name: &str) -> Option<&str> {
        self.caps.name(name).map(|m| m.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.caps.name(name).is_some()
    }

    /// The quoted phrases in a masked span, in order.
    fn quoted(&self, span: &str) -> Option<Vec<String>> {
        let phrases: Vec<String> = PLACEHOLDER
            .captures_iter(span)
            .map(|caps| {
                let index = caps.get(1)?.as_str().parse::<usize>().ok()?;
                self.quotes.get(index).cloned()
            })
            .collect::<Option<_>>()?;
        (!phrases.is_empty()).then_some(phrases)
    }

    /// The items of a keyword list: quoted phrases, or single words that are not pronouns.
    fn list(&self, quoted: &[&str], unquoted: &str) -> Option<Vec<String>> {
        if let Some(span) = quoted.iter().find_map(|name| self.text(name)) {
            return self.quoted(span);
        }
        let span = self.text(unquoted)?;
        let items: Vec<String> = LIST_SEPARATOR
            .split(span)
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect();
        let usable = !items.is_empty() && items.iter().all(|item| !is_stop_word(item));
        usable.then_some(items)
    }

    /// The one keyword of group `one`: a quoted phrase or a word that is not a pronoun.
    fn one(&self) -> Option<String> {
        let text = self.text("one")?;
        if text.contains(OPEN) {
            return self.quoted(text)?.into_iter().next();
        }
        (!is_stop_word(text)).then(|| text.to_string())
    }

    /// The number in group `name`: digits, a number word, "single", "once", "twice"...
    fn number(&self, name: &str) -> Option<usize> {
        parse_number(self.text(name)?)
    }

    /// Whether the words between a verb and its format look like they are about something
    /// else than the whole response.
    fn gap_is_clean(&self) -> bool {
        ["gap", "gap2"]
            .iter()
            .filter_map(|name| self.text(name))
            .all(|gap| !GAP_GUARD.is_match(gap))
    }
}

fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.contains(&word.to_lowercase().as_str())
}

fn parse_number(text: &str) -> Option<usize> {
    let text = text.trim().to_lowercase();
    let words: Vec<&str> = text
        .split([' ', '\t', '\n', '-'])
        .filter(|w| !w.is_empty())
        .collect();
    let first = *words.first()?;
    let word_value = |word: &str| NUMBER_WORDS.iter().position(|w| *w == word).map(|i| i + 1);
    match first {
        "once" => Some(1),
        "twice" => Some(2),
        "thrice" => Some(3),
        _ if words.contains(&"single") => Some(1),
        _ if words.contains(&"hundred") => Some(100),
        _ if first.chars().all(|c| c.is_ascii_digit()) => first.parse().ok(),
        _ => match TENS.iter().position(|w| *w == first) {
            Some(i) => {
                let unit = words.get(1).and_then(|w| word_value(w)).filter(|&u| u < 10);
                Some((i + 2) * 10 + unit.unwrap_or(0))
            }
            None => word_value(first),
        },
    }
}

/// A count, unless it applies to a part of the response or is negated.
fn count(hit: &Hit, bound: Bound) -> Option<Limits> {
    let clause = hit
        .prefix
        .rsplit([',', ';', ':'])
        .next()
        .unwrap_or(hit.prefix);
    if hit.has("per") || PART_OF_RESPONSE.is_match(clause) || NEGATED.is_match(hit.prefix) {
        return None;
    }
    let n = if hit.has("single") {
        1
    } else {
        hit.number("n")?
    };
    bound.limits(n, hit.number("m"))
}

fn frequency(hit: &Hit) -> Option<Constraint> {
    let keyword = hit.one()?;
    let n = hit.number("n")?;
    let cmp = hit.text("cmp").map(|cmp| {
        cmp.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    });
    let limits = match cmp.as_deref() {
        None | Some("exactly" | "only" | "just") => Limits::exactly(n),
        Some("at least" | "no fewer than" | "no less than" | "a minimum of") => Limits::at_least(n),
        Some("at most" | "no more than" | "not more than" | "a maximum of" | "up to") => {
            Limits::at_most(n)
        }
        Some("more than") => Limits::at_least(n.checked_add(1)?),
        // "fewer than once" would ban the word; that is said differently when meant.
        Some(_) => Limits::at_most(n.checked_sub(1).filter(|&max| max > 0)?),
    };
    Some(Constraint::KeywordFrequency {
        keyword,
        exact: limits.exact,
        min: limits.min,
        max: limits.max,
        weight: 1.0,
    })
}

fn frequency_at_most(hit: &Hit) -> Option<Constraint> {
    Some(Constraint::KeywordFrequency {
        keyword: hit.one()?,
        exact: None,
        min: None,
        max: Some(hit.number("n")?),
        weight: 1.0,
    })
}

fn forbidden(hit: &Hit) -> Option<Constraint> {
    Some(Constraint::ForbiddenKeywords {
        keywords: hit.list(&["q"], "w")?,
        weight: 1.0,
    })
}

fn forbidden_one(hit: &Hit) -> Option<Constraint> {
    Some(Constraint::ForbiddenKeywords {
        keywords: vec![hit.one()?],
        weight: 1.0,
    })
}

fn required(hit: &Hit) -> Option<Constraint> {
    // "Include the words cats or dogs" lets the model choose; a list of all would be wrong.
    if hit.text("w").is_some_and(|list| HAS_OR.is_match(list)) {
        return None;
    }
    Some(Constraint::RequiredKeywords {
        keywords: hit.list(&["q", "q2"], "w")?,
        weight: 1.0,
    })
}

fn required_one(hit: &Hit) -> Option<Constraint> {
    Some(Constraint::RequiredKeywords {
        keywords: vec![hit.one()?],
        weight: 1.0,
    })
}

fn letter_case(hit: &Hit, case: Case) -> Option<Constraint> {
    if hit.has("tail") || !hit.gap_is_clean() {
        return None;
    }
    Some(Constraint::LetterCase { case, weight: 1.0 })
}

fn lowercase(hit: &Hit) -> Option<Constraint> {
    letter_case(hit, Case::Lowercase)
}

fn uppercase(hit: &Hit) -> Option<Constraint> {
    letter_case(hit, Case::Uppercase)
}

fn json(hit: &Hit) -> Option<Constraint> {
    if hit.has("tail") || !hit.gap_is_clean() {
        return None;
    }
    // Keys after "describing each planet" or "for the API" may belong to something else.
    if hit
        .text("desc")
        .is_some_and(|desc| DESC_GUARD.is_match(desc) || GAP_GUARD.is_match(desc))
    {
        return Some(Constraint::Json {
            required_keys: Vec::new(),
            weight: 1.0,
        });
    }
    let required_keys = if hit.has("ki") || hit.has("kq2") {
        hit.list(&["kq", "kq2"], "kw")?
    } else {
        Vec::new()
    };
    Some(Constraint::Json {
        required_keys,
        weight: 1.0,
    })
}

/// The phrase to start or end with: the quote, or the single word after "the word".
fn target(hit: &Hit) -> Option<String> {
    if let Some(span) = hit.text("q") {
        return hit.quoted(span)?.into_iter().next();
    }
    let word = hit.text("w")?;
    (!is_stop_word(word)).then(|| word.to_string())
}

/// A start or end asked of a part ("each line must start with...", "the second paragraph
/// must end with..."), which the whole response need not have.
static EDGE_OF_A_PART: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:each|every|second|third|fourth|fifth|middle|other|title|heading|headline|subject|bullet|item|point|section|stanza|verse|chorus)\b")
        .expect("valid part regex")
});

/// Parts whose start or end is the response's own when they are the first or last one.
static PART_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:paragraph|sentence|line|word)s?\b").expect("valid part name regex")
});

/// Whether the clause before the match asks this of the whole response; `outer` says which
/// parts share the response's edge ("first" for a start, "last" for an end).
fn about_the_whole_response(hit: &Hit, outer: &[&str]) -> bool {
    let clause = hit
        .prefix
        .rsplit([',', ';', ':'])
        .next()
        .unwrap_or(hit.prefix);
    if EDGE_OF_A_PART.is_match(clause) {
        return false;
    }
    let clause = clause.to_lowercase();
    !PART_NAME.is_match(&clause) || outer.iter().any(|word| clause.contains(word))
}

fn starts_with(hit: &Hit) -> Option<Constraint> {
    if !about_the_whole_response(hit, &["first", "opening"]) {
        return None;
    }
    Some(Constraint::StartsWith {
        prefix: target(hit)?,
        weight: 1.0,
    })
}

fn ends_with(hit: &Hit) -> Option<Constraint> {
    if !about_the_whole_response(hit, &["last", "final", "closing"]) {
        return None;
    }
    Some(Constraint::EndsWith {
        suffix: target(hit)?,
        weight: 1.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Putting the findings together
// ---------------------------------------------------------------------------------------------

/// Merges counts of one unit, drops duplicates and contradictions, and keeps only what the
/// verifier accepts.
fn finish(found: Vec<Found>) -> Vec<Constraint> {
    let mut slots: Vec<Option<Found>> = Vec::new();
    let mut contradicted: Vec<Unit> = Vec::new();
    for item in found {
        match item {
            Found::Count(unit, limits) => {
                let existing = slots.iter_mut().flatten().find_map(|slot| match slot {
                    Found::Count(other, existing) if *other == unit => Some(existing),
                    _ => None,
                });
                match existing {
                    Some(existing) => match existing.intersect(limits) {
                        Some(merged) => *existing = merged,
                        None => contradicted.push(unit),
                    },
                    None => slots.push(Some(Found::Count(unit, limits))),
                }
            }
            Found::Other(constraint) => {
                let duplicate = slots
                    .iter()
                    .flatten()
                    .any(|slot| matches!(slot, Found::Other(other) if *other == constraint));
                if !duplicate {
                    slots.push(Some(Found::Other(constraint)));
                }
            }
        }
    }
    let constraints: Vec<Constraint> = slots
        .into_iter()
        .flatten()
        .filter_map(|slot| match slot {
            Found::Count(unit, _) if contradicted.contains(&unit) => None,
            Found::Count(unit, limits) => Some(unit.constraint(limits)),
            Found::Other(constraint) => Some(constraint),
        })
        .collect();
    // "Title in all caps, the rest in lowercase" cannot be checked on the whole response.
    let cases: Vec<Case> = constraints
        .iter()
        .filter_map(|c| match c {
            Constraint::LetterCase { case, .. } => Some(*case),
            _ => None,
        })
        .collect();
    let mixed_case = cases.windows(2).any(|pair| pair[0] != pair[1]);
    // "Answer in JSON" and "a JSON object with the keys..." are one requirement.
    let keyed_json = constraints
        .iter()
        .any(|c| matches!(c, Constraint::Json { required_keys, .. } if !required_keys.is_empty()));
    constraints
        .into_iter()
        .filter(|c| !(mixed_case && matches!(c, Constraint::LetterCase { .. })))
        .filter(|c| {
            !(keyed_json
                && matches!(c, Constraint::Json { required_keys, .. } if required_keys.is_empty()))
        })
        .filter(|c| c.prepare().is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(exact: Option<usize>, min: Option<usize>, max: Option<usize>) -> Constraint {
        Constraint::WordCount {
            exact,
            min,
            max,
            weight: 1.0,
        }
    }

    #[test]
    fn every_rule_compiles() {
        assert!(RULES.len() > COUNT_FORMS.len());
    }

    #[test]
    fn fewer_than_is_one_less() {
        assert_eq!(
            from_prompt("Describe Rust in fewer than 40 words."),
            [words(None, None, Some(39))]
        );
        assert_eq!(from_prompt("Answer in fewer than 1 word."), []);
    }

    #[test]
    fn no_more_than_is_not_more_than() {
        assert_eq!(
            from_prompt("Use no more than 50 words."),
            [words(None, None, Some(50))]
        );
        assert_eq!(
            from_prompt("Don't go over 100 words."),
            [words(None, None, Some(100))]
        );
    }

    #[test]
    fn limits_of_one_unit_are_merged() {
        assert_eq!(
            from_prompt("Write at least 50 words. Keep it to at most 100 words."),
            [words(None, Some(50), Some(100))]
        );
        assert_eq!(
            from_prompt("Use at least 100 words. Use at most 50 words."),
            [],
            "contradictions are dropped"
        );
    }

    #[test]
    fn counts_of_parts_are_not_counts_of_the_response() {
        assert_eq!(
            from_prompt("Write a poem with at most 5 words per line."),
            []
        );
        assert_eq!(
            from_prompt("Each paragraph should have at most 3 sentences."),
            []
        );
        assert_eq!(from_prompt("Give it a title of at most 5 words."), []);
    }

    #[test]
    fn quotes_are_taken_whole_straight_or_curly() {
        let expected = [Constraint::EndsWith {
            suffix: "Is there anything else?".into(),
            weight: 1.0,
        }];
        assert_eq!(
            from_prompt("End your response with 'Is there anything else?'"),
            expected
        );
        assert_eq!(
            from_prompt("End your response with \u{201C}Is there anything else?\u{201D}"),
            expected
        );
        assert_eq!(
            from_prompt("Begin with \u{2018}Let's go\u{2019} and nothing else."),
            [Constraint::StartsWith {
                prefix: "Let's go".into(),
                weight: 1.0
            }]
        );
    }

    #[test]
    fn questions_and_topics_yield_nothing() {
        for prompt in [
            "Why do people use all caps in emails?",
            "Explain what a JSON file is.",
            "How do I write an essay in five paragraphs?",
            "Explain how to use the word processor.",
            "Write a story about a word that ends with a sigh.",
            "Don't mention it.",
            "Write a Python function that returns the data as JSON.",
            "Answer in JSON or YAML.",
        ] {
            assert_eq!(from_prompt(prompt), [], "{prompt}");
        }
    }

    #[test]
    fn keyword_lists_need_a_clear_end() {
        assert_eq!(
            from_prompt("Include the keywords rust and memory safety."),
            [],
            "'memory safety' is not one word, and its end cannot be told"
        );
        assert_eq!(
            from_prompt("Include the keywords rust and speed in your answer."),
            [Constraint::RequiredKeywords {
                keywords: vec!["rust".into(), "speed".into()],
                weight: 1.0
            }]
        );
        assert_eq!(from_prompt("Use the words cats or dogs."), []);
    }

    #[test]
    fn make_sure_it_ends_with_is_about_the_whole_response() {
        assert_eq!(
            from_prompt("Write a note. Make sure it ends with 'Good luck!'"),
            [Constraint::EndsWith {
                suffix: "Good luck!".into(),
                weight: 1.0
            }]
        );
        for prompt in [
            "Make sure it ends with a question.",
            "Make sure the title ends with 'Inc.'",
            "Make sure each line ends with 'stop'.",
        ] {
            assert_eq!(from_prompt(prompt), [], "{prompt}");
        }
    }

    #[test]
    fn json_keys_may_follow_what_the_object_describes() {
        let json = |keys: &[&str]| Constraint::Json {
            required_keys: keys.iter().map(|k| k.to_string()).collect(),
            weight: 1.0,
        };
        assert_eq!(
            from_prompt("Return a JSON object describing a book, with the keys title and year."),
            [json(&["title", "year"])]
        );
        assert_eq!(
            from_prompt("Return a JSON object describing a book or a movie."),
            [json(&[])]
        );
        assert_eq!(
            from_prompt("Return a JSON object for each user, with the keys name and age."),
            [json(&[])],
            "the keys may be those of the inner objects"
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        for prompt in [
            "",
            "\u{E000}99\u{E001}",
            "End with \"\".",
            "'",
            "\"",
            "in exactly 99999999999 words",
            "```\nat most 5 words\n",
            "Use the word '\u{E000}0\u{E001}'.",
        ] {
            for constraint in from_prompt(prompt) {
                assert!(constraint.prepare().is_ok(), "{prompt:?}");
            }
        }
    }
}
