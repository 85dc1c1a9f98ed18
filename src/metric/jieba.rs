//! Chinese word segmentation equal to Python jieba 0.42.1's `jieba.cut(text)` (accurate mode, HMM on).
//! Dictionary, DAG, route and Viterbi come from the `jieba-rs` crate (pinned `=0.11.0`, embedded
//! dictionary); this module supplies Python's block splitting and finalseg's alphanumeric split, and
//! swaps in Python's exact HMM tables (`data/jieba_hmm.model.zst`) and dictionary total.

use std::sync::LazyLock;

use jieba_rs::{HmmModel, Jieba};

/// Python's `finalseg` tables (start, transition, and emission for U+4E00..=U+9FD5) in the
/// `hmm.model` text format of `jieba_rs::HmmModel::load`, every value written so it parses back to
/// Python's exact `f64` (`repr`), emissions sorted by value then character, then `zstd --ultra -22`.
/// jieba-rs's built-in tables round emissions to 6 decimals, which changes Viterbi's choice on close
/// calls (see `摒彭嫟` in the tests).
static HMM_MODEL_ZST: &[u8] = include_bytes!("data/jieba_hmm.model.zst");

/// Python's `dict.txt` lists `B超 3` twice and its total counts both lines; the copy inside jieba-rs
/// lists it once, so its total is 3 short, which shifts every route score. A word that can never
/// occur inside a block (U+FDD0 is a noncharacter) makes up the difference.
const TOTAL_PAD_WORD: &str = "\u{FDD0}";
const TOTAL_PAD_FREQ: usize = 3;

static JIEBA: LazyLock<Jieba> = LazyLock::new(|| {
    let mut jieba = Jieba::new();
    jieba.add_word(TOTAL_PAD_WORD, Some(TOTAL_PAD_FREQ), None);
    let model_text =
        zstd::decode_all(HMM_MODEL_ZST).expect("embedded jieba HMM model is valid zstd");
    let model = HmmModel::load(&mut &model_text[..]).expect("embedded jieba HMM model parses");
    jieba.set_hmm_model(model);
    jieba
});

/// Segments `text` as Python's `list(jieba.cut(text))` does, whitespace and punctuation included.
pub fn cut(text: &str) -> Vec<String> {
    cut_borrowed(text).into_iter().map(str::to_owned).collect()
}

/// [`cut`] without copying: every word is a slice of `text`.
pub fn cut_borrowed(text: &str) -> Vec<&str> {
    let mut words = Vec::with_capacity(text.len() / 2);
    let mut run_start = 0;
    let mut in_block = false;
    for (i, c) in text.char_indices() {
        let block_char = is_block_char(c);
        if i > 0 && block_char != in_block {
            push_run(&text[run_start..i], in_block, &mut words);
            run_start = i;
        }
        in_block = block_char;
    }
    if run_start < text.len() {
        push_run(&text[run_start..], in_block, &mut words);
    }
    words
}

/// Python's `re_han_default` class: the characters jieba's dictionary segmentation sees. Note
/// U+4E00..=U+9FD5 only, not the CJK extensions or the end of the unified block.
fn is_block_char(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FD5}' | 'a'..='z' | 'A'..='Z' | '0'..='9' | '+' | '#' | '&' | '.' | '_' | '%' | '-')
}

fn push_run<'a>(run: &'a str, block: bool, words: &mut Vec<&'a str>) {
    if block {
        push_block(run, words);
        return;
    }
    // Outside blocks Python yields every character alone, except that `\r\n` stays one token
    // (`re_skip_default`); which characters count as whitespace makes no difference here.
    let mut rest = run;
    while let Some(c) = rest.chars().next() {
        let len = if rest.starts_with("\r\n") {
            2
        } else {
            c.len_utf8()
        };
        words.push(&rest[..len]);
        rest = &rest[len..];
    }
}

/// One `re_han_default` block through jieba-rs, with its one remaining departure from Python undone.
///
/// Where the route leaves single characters that are not a dictionary word, both hand them to the
/// HMM, and both split the non-Han part of such a run on alphanumeric groups; but jieba-rs's groups
/// continue across `.`, `_` and `-` (`ChatGLM-6B`, `2-4`, `v1.2.3`) while finalseg's `re_skip` is
/// `[a-zA-Z0-9]+(?:\.\d+)?%?`. A token that starts alphanumeric and holds a connector can only be
/// such a group: any other multi-character token is a dictionary word, and no word of the default
/// dictionary contains `.`, `_` or `-`.
fn push_block<'a>(block: &'a str, words: &mut Vec<&'a str>) {
    for token in JIEBA.cut(block, true) {
        let word = token.word;
        if word.len() > 2
            && word.as_bytes()[0].is_ascii_alphanumeric()
            && word.bytes().any(is_connector)
        {
            push_alnum_groups(word, words);
        } else {
            words.push(word);
        }
    }
}

fn is_connector(b: u8) -> bool {
    matches!(b, b'.' | b'_' | b'-')
}

/// Splits ASCII `run` as finalseg does with `re_skip.split`: each `[a-zA-Z0-9]+(?:\.\d+)?%?` match
/// is a word, and so is each non-empty stretch between matches.
fn push_alnum_groups<'a>(run: &'a str, words: &mut Vec<&'a str>) {
    let bytes = run.as_bytes();
    let n = bytes.len();
    let mut gap_start = 0;
    let mut i = 0;
    while i < n {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i + 1 < n && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
            i += 2;
            while i < n && bytes[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < n && bytes[i] == b'%' {
            i += 1;
        }
        if gap_start < start {
            words.push(&run[gap_start..start]);
        }
        words.push(&run[start..i]);
        gap_start = i;
    }
    if gap_start < n {
        words.push(&run[gap_start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(text, list(jieba.cut(text)))` from Python 3.11.7 with jieba 0.42.1. `摒彭嫟` and `挠淹娈掓婉絹`
    /// come out differently with jieba-rs's rounded HMM tables; CJK extension characters and U+9FD6
    /// onwards sit outside Python's blocks; the rest mix Latin, digits, `.`/`-`/`_`/`%`, spaces,
    /// line breaks and full-width forms.
    #[rustfmt::skip]
    const GOLDEN: &[(&str, &[&str])] = &[
        ("ChatGLM-6B模型在2-4张卡上用PipeDream-2BW训练", &["ChatGLM", "-", "6B", "模型", "在", "2", "-", "4", "张卡上", "用", "PipeDream", "-", "2BW", "训练"]),
        ("ChatGLM2-6B和GPT-3.5-turbo的对比：LLaMA-7B表现一般。", &["ChatGLM2", "-", "6B", "和", "GPT", "-", "3.5", "-", "turbo", "的", "对比", "：", "LLaMA", "-", "7B", "表现", "一般", "。"]),
        ("Qwen1.5-72B在MMLU上得分77.5，Mixtral-8x7B-v0.1略低", &["Qwen1.5", "-", "72B", "在", "MMLU", "上", "得分", "77.5", "，", "Mixtral", "-", "8x7B", "-", "v0.1", "略低"]),
        ("准确率提升了3.5%，达到99.12%。", &["准确率", "提升", "了", "3.5%", "，", "达到", "99.12%", "。"]),
        ("共有1,000个样本，耗时2.5小时", &["共有", "1", ",", "000", "个", "样本", "，", "耗时", "2.5", "小时"]),
        ("2023-06-25发布，版本v1.2.3", &["2023", "-", "06", "-", "25", "发布", "，", "版本", "v1.2", ".", "3"]),
        ("2024年1月1日0:00", &["2024", "年", "1", "月", "1", "日", "0", ":", "00"]),
        ("访问https://github.com/THUDM/ChatGLM-6B获取代码", &["访问", "https", ":", "/", "/", "github", ".", "com", "/", "THUDM", "/", "ChatGLM", "-", "6B", "获取", "代码"]),
        ("e-mail地址user.name+tag@mail.example.cn", &["e", "-", "mail", "地址", "user", ".", "name", "+", "tag", "@", "mail", ".", "example", ".", "cn"]),
        ("我爱北京天安门\r\n你好\n世界\t!", &["我", "爱", "北京", "天安门", "\r\n", "你好", "\n", "世界", "\t", "!"]),
        ("\r\r\n\n", &["\r", "\r\n", "\n"]),
        ("\t缩进的一行\n", &["\t", "缩进", "的", "一行", "\n"]),
        ("  多个  空格\u{3000}全角空格\u{A0}不换行", &[" ", " ", "多个", " ", " ", "空格", "\u{3000}", "全角", "空格", "\u{A0}", "不", "换行"]),
        ("全角：ＡＢＣ１２３，半角：ABC123。", &["全角", "：", "Ａ", "Ｂ", "Ｃ", "１", "２", "３", "，", "半角", "：", "ABC123", "。"]),
        ("Hello World 你好 世界", &["Hello", " ", "World", " ", "你好", " ", "世界"]),
        ("他说：“今天天气真好！”（完）", &["他", "说", "：", "“", "今天天气", "真", "好", "！", "”", "（", "完", "）"]),
        ("价格：￥1,299.00元（含税）", &["价格", "：", "￥", "1", ",", "299.00", "元", "（", "含税", "）"]),
        ("𠀀𠀁中文㐀字", &["𠀀", "𠀁", "中文", "㐀", "字"]),
        ("鿖鿗测试", &["鿖", "鿗", "测试"]),
        ("emoji😀表情👍很好", &["emoji", "😀", "表情", "👍", "很", "好"]),
        ("C++和C#是编程语言，AT&T是公司", &["C++", "和", "C#", "是", "编程语言", "，", "AT&T", "是", "公司"]),
        ("做了B超和T恤", &["做", "了", "B超", "和", "T恤"]),
        ("x86_64架构下node_modules目录", &["x86", "_", "64", "架构", "下", "node", "_", "modules", "目录"]),
        ("a.b.c和v1.2.3以及abc.5", &["a", ".", "b", ".", "c", "和", "v1.2", ".", "3", "以及", "abc.5"]),
        ("温度为-3.5℃，湿度50%", &["温度", "为", "-", "3.5", "℃", "，", "湿度", "50%"]),
        ("使用fp16和INT4量化，batch_size=32", &["使用", "fp16", "和", "INT4", "量化", "，", "batch", "_", "size", "=", "32"]),
        ("top-p=0.9, top_k=50", &["top", "-", "p", "=", "0.9", ",", " ", "top", "_", "k", "=", "50"]),
        ("ROUGE-L和BLEU-4指标", &["ROUGE", "-", "L", "和", "BLEU", "-", "4", "指标"]),
        ("RTX4090显卡24GB显存", &["RTX4090", "显卡", "24GB", "显存"]),
        ("1.5倍速播放，第3.x版", &["1.5", "倍速", "播放", "，", "第", "3", ".", "x", "版"]),
        ("%%--..__++##&&", &["%%--..__++##&&"]),
        ("カタカナと한국어混合中文", &["カ", "タ", "カ", "ナ", "と", "한", "국", "어", "混合", "中文"]),
        ("摒彭嫟", &["摒", "彭", "嫟"]),
        ("挠淹娈掓婉絹", &["挠", "淹", "娈", "掓", "婉", "絹"]),
        ("李小福是创新办主任也是云计算方面的专家", &["李小福", "是", "创新", "办", "主任", "也", "是", "云", "计算", "方面", "的", "专家"]),
        ("他来到了网易杭研大厦", &["他", "来到", "了", "网易", "杭研", "大厦"]),
        ("小明硕士毕业于中国科学院计算所，后在日本京都大学深造", &["小明", "硕士", "毕业", "于", "中国科学院", "计算所", "，", "后", "在", "日本京都大学", "深造"]),
        ("工信处女干事每月经过下属科室都要亲口交代24口交换机等技术性器件的安装工作", &["工信处", "女干事", "每月", "经过", "下属", "科室", "都", "要", "亲口", "交代", "24", "口", "交换机", "等", "技术性", "器件", "的", "安装", "工作"]),
        ("这是一个伸手不见五指的黑夜。我叫孙悟空，我爱北京，我爱Python和C++。", &["这是", "一个", "伸手不见五指", "的", "黑夜", "。", "我", "叫", "孙悟空", "，", "我", "爱", "北京", "，", "我", "爱", "Python", "和", "C++", "。"]),
        ("临床一个个湖麻烦、意义使用ChatGL血2-6B2-不用初中热带颇部用文化一项法院。", &["临床", "一个个", "湖", "麻烦", "、", "意义", "使用", "ChatGL", "血", "2", "-", "6B2", "-", "不用", "初中", "热带", "颇", "部用", "文化", "一项", "法院", "。"]),
        ("感觉最讲。2-4》广州男婆专题网上十。", &["感觉", "最", "讲", "。", "2", "-", "4", "》", "广州", "男婆", "专题", "网上", "十", "。"]),
        ("", &[]),
    ];

    #[test]
    fn matches_python_jieba() {
        for &(text, want) in GOLDEN {
            assert_eq!(cut(text), want, "{text:?}");
            assert_eq!(cut_borrowed(text), want, "{text:?}");
        }
    }

    #[test]
    fn dictionary_total_matches_python() {
        // Python: `jieba.dt.total` after initialisation.
        assert!(
            format!("{:?}", *JIEBA).contains("total_freq: 60101967"),
            "{:?}",
            *JIEBA
        );
    }

    #[test]
    fn alnum_groups_follow_finalseg() {
        let split = |s| {
            let mut v = Vec::new();
            push_alnum_groups(s, &mut v);
            v
        };
        assert_eq!(split("ChatGLM-6B"), ["ChatGLM", "-", "6B"]);
        assert_eq!(split("v1.2.3"), ["v1.2", ".", "3"]);
        assert_eq!(split("a.5b%"), ["a.5", "b%"]);
        assert_eq!(split("1.x_y"), ["1", ".", "x", "_", "y"]);
        assert_eq!(split("3.5%"), ["3.5%"]);
    }

    #[test]
    fn empty_and_blank() {
        assert!(cut("").is_empty());
        assert_eq!(cut(" \r\n\r\t"), [" ", "\r\n", "\r", "\t"]);
    }
}
