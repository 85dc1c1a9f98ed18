//! Chat templates as the model ships them (GGUF `tokenizer.chat_template`, HF
//! `tokenizer_config.json`), rendered with minijinja the way Hugging Face renders them: blocks
//! trimmed and left-stripped, Python string methods (`.strip()`, `.startswith()` …) available,
//! and `raise_exception` for templates that reject a conversation.

use minijinja::{context, Environment, Error, ErrorKind, Value};

/// Renders `messages` (role, content) with `template`; `add_generation_prompt` opens the
/// assistant's turn.
pub fn render(template: &str, messages: &[(String, String)], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String, String> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| e.to_string())?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
    env.add_function("strftime_now", |_fmt: String| -> String { crate::util::iso8601(crate::util::now_unix())[..10].to_string() });
    let tmpl = env.template_from_str(template).map_err(|e| format!("bad template: {e}"))?;
    let msgs: Vec<Value> = messages.iter().map(|(role, content)| context! { role => role, content => content }).collect();
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| format!("cannot render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system_prompt() {
        let out = render(CHATML, &[("user".into(), "Hi".into())], true, "", "").unwrap();
        assert_eq!(out, "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = "{% if messages[0]['content'].strip().startswith('x') %}{{ raise_exception('no x') }}{% endif %}{{ messages[0]['content'].upper() }}";
        assert_eq!(render(t, &[("user".into(), " ab ".into())], false, "", "").unwrap(), " AB ");
        assert!(render(t, &[("user".into(), " xy".into())], false, "", "").unwrap_err().contains("no x"));
    }

    #[test]
    fn trim_and_lstrip_blocks() {
        let t = "{% for m in messages %}\n  {{ m.content }}\n{% endfor %}";
        assert_eq!(render(t, &[("user".into(), "a".into())], false, "", "").unwrap(), "  a\n");
    }
}
