//! A tiny document model, rendered twice: as Markdown (`report.md`) and as a self-contained
//! HTML page (`index.html`, which only links the figure files), so both say the same.

/// A table cell; `strong` renders bold.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    pub text: String,
    pub strong: bool,
}

impl Cell {
    pub fn strong(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            strong: true,
        }
    }
}

impl<T: Into<String>> From<T> for Cell {
    fn from(text: T) -> Self {
        Cell {
            text: text.into(),
            strong: false,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Block {
    Heading(u8, String),
    Para(String),
    /// A highlighted paragraph (missing jobs, failed checks).
    Warning(String),
    List(Vec<String>),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<Cell>>,
        caption: Option<String>,
    },
    /// A figure: paths relative to the report folder.
    Figure {
        title: String,
        png: String,
        svg: String,
    },
}

fn md_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        // Brackets stay: `[low, high]` is never followed by `(` here, so it is no link.
        if matches!(c, '\\' | '`' | '*' | '_' | '|' | '<')
            || (i == 0 && matches!(c, '#' | '>' | '-' | '+'))
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Markdown (CommonMark + GitHub tables).
pub(crate) fn to_markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                out.push_str(&format!(
                    "{} {}\n\n",
                    "#".repeat(*level as usize),
                    md_escape(text)
                ));
            }
            Block::Para(text) => out.push_str(&format!("{}\n\n", md_escape(text))),
            Block::Warning(text) => {
                out.push_str(&format!("> **Warning:** {}\n\n", md_escape(text)))
            }
            Block::List(items) => {
                for item in items {
                    out.push_str(&format!("- {}\n", md_escape(item)));
                }
                out.push('\n');
            }
            Block::Table {
                header,
                rows,
                caption,
            } => {
                if let Some(caption) = caption {
                    out.push_str(&format!("*{}*\n\n", md_escape(caption)));
                }
                let cells: Vec<String> = header.iter().map(|h| md_escape(h)).collect();
                out.push_str(&format!("| {} |\n", cells.join(" | ")));
                let rule: Vec<&str> = (0..header.len())
                    .map(|i| if i == 0 { "---" } else { "---:" })
                    .collect();
                out.push_str(&format!("|{}|\n", rule.join("|")));
                for row in rows {
                    let cells: Vec<String> = row
                        .iter()
                        .map(|c| {
                            let text = md_escape(&c.text);
                            if c.strong && !text.is_empty() {
                                format!("**{text}**")
                            } else {
                                text
                            }
                        })
                        .collect();
                    out.push_str(&format!("| {} |\n", cells.join(" | ")));
                }
                out.push('\n');
            }
            Block::Figure { title, png, svg } => {
                out.push_str(&format!(
                    "![{t}]({png})\n\n*{t}*: [PNG]({png}) · [SVG]({svg})\n\n",
                    t = md_escape(title)
                ));
            }
        }
    }
    out
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body { font-family: 'DejaVu Sans', Verdana, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; color: #555; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: .5em 1em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 14px; color: #555; }
th.text, td.text { white-space: normal; text-align: left; min-width: 16em; }
";

/// Cells longer than this make their column prose: wrapped and left-aligned, so a table of
/// explanations fits the page instead of running off its right edge.
const PROSE_CHARS: usize = 40;

/// A complete HTML page; figures are linked, everything else inline.
pub(crate) fn to_html(page_title: &str, blocks: &[Block]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        html_escape(page_title)
    );
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let level = (*level).clamp(1, 6);
                out.push_str(&format!("<h{level}>{}</h{level}>\n", html_escape(text)));
            }
            Block::Para(text) => out.push_str(&format!("<p>{}</p>\n", html_escape(text))),
            Block::Warning(text) => out.push_str(&format!(
                "<p class=\"warning\"><strong>Warning:</strong> {}</p>\n",
                html_escape(text)
            )),
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    out.push_str(&format!("<li>{}</li>\n", html_escape(item)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table {
                header,
                rows,
                caption,
            } => {
                out.push_str("<table>\n");
                if let Some(caption) = caption {
                    out.push_str(&format!("<caption>{}</caption>\n", html_escape(caption)));
                }
                let prose = |j: usize| {
                    rows.iter().any(|r| {
                        r.get(j)
                            .is_some_and(|c| c.text.chars().count() > PROSE_CHARS)
                    })
                };
                let class = |j: usize| if prose(j) { " class=\"text\"" } else { "" };
                out.push_str("<thead><tr>");
                for (j, h) in header.iter().enumerate() {
                    out.push_str(&format!("<th{}>{}</th>", class(j), html_escape(h)));
                }
                out.push_str("</tr></thead>\n<tbody>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for (j, c) in row.iter().enumerate() {
                        let text = html_escape(&c.text);
                        let text = if c.strong {
                            format!("<strong>{text}</strong>")
                        } else {
                            text
                        };
                        out.push_str(&format!("<td{}>{text}</td>", class(j)));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
            Block::Figure { title, png, svg } => {
                out.push_str(&format!(
                    "<figure>\n<a href=\"{png}\"><img src=\"{png}\" alt=\"{t}\" loading=\"lazy\"></a>\n\
                     <figcaption>{t} · <a href=\"{svg}\">SVG</a></figcaption>\n</figure>\n",
                    png = html_escape(png),
                    svg = html_escape(svg),
                    t = html_escape(title)
                ));
            }
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_in_both_formats() {
        let blocks = vec![
            Block::Heading(1, "a_b <c>".into()),
            Block::Table {
                header: vec!["model".into(), "x|y".into()],
                rows: vec![vec![Cell::from("m_1"), Cell::strong("5%")]],
                caption: None,
            },
        ];
        let md = to_markdown(&blocks);
        assert!(md.contains("# a\\_b \\<c>"), "{md}");
        assert!(md.contains("| model | x\\|y |"), "{md}");
        assert!(md.contains("| m\\_1 | **5%** |"), "{md}");
        let html = to_html("t", &blocks);
        assert!(html.contains("<h1>a_b &lt;c&gt;</h1>"), "{html}");
        assert!(html.contains("<td><strong>5%</strong></td>"), "{html}");
    }

    #[test]
    fn long_text_columns_wrap_and_numbers_do_not() {
        let detail = "accuracy non-increasing over 4 eps values (tolerance 0.01)";
        let blocks = vec![Block::Table {
            header: vec!["model".into(), "result".into(), "detail".into()],
            rows: vec![
                vec![Cell::from("a"), Cell::from("passed"), Cell::from(detail)],
                vec![Cell::from("b"), Cell::from("passed"), Cell::from("short")],
            ],
            caption: None,
        }];
        let html = to_html("t", &blocks);
        assert!(
            html.contains("<th>result</th><th class=\"text\">detail</th>"),
            "{html}"
        );
        assert!(html.contains(&format!("<td class=\"text\">{detail}</td>")));
        assert!(html.contains("<td>passed</td><td class=\"text\">short</td>"));
    }
}
