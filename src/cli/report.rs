//! How a failed command is reported: once, on one line per message, without repeating the
//! causes that a message already quotes (many errors print their source in their own text).

/// The error and its causes, each cause shown only if the text so far does not contain it.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pool timed out")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("client registry: {0}")]
    struct Quoting(#[source] Inner);

    #[test]
    fn a_cause_quoted_by_its_error_is_not_repeated() {
        let error = anyhow::Error::new(Quoting(Inner)).context("starting");
        assert_eq!(
            describe(&error),
            "starting: client registry: pool timed out"
        );
    }

    #[test]
    fn causes_not_quoted_are_kept() {
        let error = anyhow::Error::new(Inner).context("reading the seed");
        assert_eq!(describe(&error), "reading the seed: pool timed out");
    }
}
